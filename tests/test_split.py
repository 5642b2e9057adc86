"""The chitchat speaker split: deterministic, disjoint, documented sizes, no leakage."""

from __future__ import annotations

import json
import random

import pytest

from persona_sdk.conversation import ASSISTANT, USER
from persona_sdk.errors import ConfigError, PersonaError, SplitDataError
from persona_sdk.reply_examples import build_examples, conversation_turns
from persona_sdk.split import (
    SplitConfig,
    bucket_sizes,
    chitchat_split,
    conversation_senders,
    repliers,
    select,
    split_speakers,
)

CFG = SplitConfig(n_b=3, n_c=4, b_min=10, b_max=40, c_min=2, c_max=5)


def _synthetic(seed: int = 0) -> dict:
    """A chitchat-format dict: 6 regular speakers (12-30 conversations), 8 few-shot
    (2-5), a prolific hub (60), 10 one-off speakers, unanswered openers, and pairs
    between regular/few-shot speakers so held-out conversations are shared."""
    rng = random.Random(seed)
    regular = [f"reg{i}" for i in range(6)]
    few = [f"few{i}" for i in range(8)]
    data: dict = {}

    def conv(a: str, b: str, n_turns: int = 4) -> None:
        cid = f"c{len(data):04d}"
        groups = []
        for t in range(n_turns):
            who = a if t % 2 == 0 else b
            groups.append([{"sender": who, "text": f"{cid} msg {t}", "timestamp": "2018-05-02T19:38:15Z"}
                           for _ in range(rng.randint(1, 2))])
        data[cid] = {"messages": groups, "prompt": "", "ratings": {}, "start": ""}

    for i, s in enumerate(regular):
        for _ in range(12 + 3 * i):
            conv("hub", s) if rng.random() < 0.5 else conv(s, "hub")
    for i, s in enumerate(few):
        for _ in range(2 + i % 4):
            conv(s, "hub")
    # held-out speakers talking to each other
    for _ in range(6):
        conv(rng.choice(regular), rng.choice(few))
    for _ in range(4):
        a, b = rng.sample(regular, 2)
        conv(a, b)
    for i in range(10):
        conv(f"once{i}", "hub")
    for i in range(5):  # unanswered openers: one sender only
        data[f"u{i}"] = {"messages": [[{"sender": "reg0", "text": "hi", "timestamp": "2018-05-02T19:38:15Z"}]]}
    return data


def _senders(data: dict) -> dict[str, list[str]]:
    return {c: [m["sender"] for g in v["messages"] for m in g] for c, v in data.items()}


def test_split_is_deterministic_and_independent_of_order():
    senders = _senders(_synthetic())
    a = split_speakers(senders, CFG)
    b = split_speakers(senders, CFG)
    items = list(senders.items())
    random.Random(1).shuffle(items)
    c = split_speakers(dict(items), CFG)
    assert a.speakers == b.speakers == c.speakers
    assert a.order == c.order


def test_parts_and_buckets_are_disjoint_and_sized_as_documented():
    senders = _senders(_synthetic())
    sp = split_speakers(senders, CFG)
    parts = {p: {s.speaker for s in sp.part(p)} for p in "ABC"}
    assert not (parts["A"] & parts["B"]) and not (parts["A"] & parts["C"]) and not (parts["B"] & parts["C"])
    assert parts["A"] | parts["B"] | parts["C"] == set(sp.speakers)
    assert len(parts["B"]) == 3 and parts["B"] <= {f"reg{i}" for i in range(6)}
    assert len(parts["C"]) == 4 and parts["C"] <= {f"few{i}" for i in range(8)}
    assert "hub" in parts["A"]  # 60+ conversations: above b_max, stays in A
    n_of: dict[str, int] = {}
    for seq in senders.values():
        for s in repliers(seq):
            n_of[s] = n_of.get(s, 0) + 1
    for s in sp.speakers.values():
        assert not (set(s.train) & set(s.val)) and not (set(s.train) & set(s.test)) and not (set(s.val) & set(s.test))
        if s.part != "A":  # held-out sets are exact 8:1:1 buckets
            _, n_val, n_test = bucket_sizes(n_of[s.speaker])
            assert (len(s.val), len(s.test)) == (n_val, n_test)
            assert len(s.test) >= 1 and len(s.train) >= 1
    assert sp.summary()["B"]["speakers"] == 3


def test_held_out_conversations_never_touch_training():
    data = _synthetic()
    sp = split_speakers(_senders(data), CFG)
    held = {c for p in "BC" for s in sp.part(p) for c in s.held_out}
    assert held  # the synthetic data has held-out conversations shared with partners
    source = {c for c, _ in sp.source_train()} | {c for c, _ in sp.source_val()}
    assert not held & source
    for s in sp.speakers.values():
        assert not held & set(s.train), s.speaker
    # source training uses only part-A speakers' replies
    assert {spk for _, spk in sp.source_train()} <= {s.speaker for s in sp.part("A")}
    # and does use the hub's conversations with held-out speakers' *train* sets
    b_train = {c for s in sp.part("B") for c in s.train}
    assert b_train & {c for c, _ in sp.source_train()}


def test_bucket_sizes_are_8_1_1():
    assert bucket_sizes(0) == (0, 0, 0)
    assert bucket_sizes(1) == (1, 0, 0)
    assert bucket_sizes(2) == (1, 0, 1)
    assert bucket_sizes(3) == (1, 1, 1)
    assert bucket_sizes(5) == (3, 1, 1)
    assert bucket_sizes(20) == (16, 2, 2)
    assert bucket_sizes(25) == (19, 3, 3)
    assert bucket_sizes(100) == (80, 10, 10)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="n_b"):
        SplitConfig(n_b=-1)
    with pytest.raises(ConfigError, match="c_min"):
        SplitConfig(c_min=1)
    with pytest.raises(ConfigError, match="disjoint"):
        SplitConfig(c_max=25)
    with pytest.raises(SplitDataError):
        split_speakers({}, CFG)
    with pytest.raises(SplitDataError):
        split_speakers({"x": ["a", "a"]}, CFG)


def test_chitchat_file_split_feeds_examples(tmp_path):
    data = _synthetic()
    # a placeholder-only message does not make its sender a replier
    data["media"] = {"messages": [[{"sender": "few0", "text": "x", "timestamp": "2018-05-02T19:38:15Z"}],
                                  [{"sender": "hub", "text": "", "timestamp": "2018-05-02T19:38:15Z"}]]}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    chats, sp = chitchat_split(str(path), CFG)
    assert "media" not in {c for s in sp.speakers.values() for c in s.train + s.val + s.test}
    del data["media"]
    assert sp.speakers == split_speakers(_senders(data), CFG).speakers
    b = sp.part("B")[0]
    test_chats = select(chats, b.test)
    assert [c.id for c in test_chats.conversations] == sorted(b.test, key=lambda c: list(data).index(c))
    turns, _ = conversation_turns(test_chats, 0, b.speaker)
    assert {t.role for t in turns} == {USER, ASSISTANT}
    ex = build_examples(select(chats, b.train), b.speaker, val_fraction=0.0, min_replies=1)
    assert len(ex.train) >= len(b.train)  # at least one reply per reply conversation


def test_malformed_chitchat_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"c1": {"messages": [[{"text": "secret words"}]]}}')
    with pytest.raises(PersonaError, match="conversation 1") as exc:
        chitchat_split(str(bad))
    assert "secret" not in str(exc.value)
    bad.write_bytes(b"\x00\xff\xfe not json")
    with pytest.raises(PersonaError):
        chitchat_split(str(bad))


def test_installed_chitchat_split_matches_protocol():
    """The real corpus (PyPI package chitchat-dataset): sizes in benchmarks/README.md."""
    chats, sp = chitchat_split()
    summary = sp.summary()
    assert summary["B"]["speakers"] == 30 and summary["C"]["speakers"] == 50
    n_of: dict[str, int] = {}
    for seq in conversation_senders(chats).values():
        for s in repliers(seq):
            n_of[s] = n_of.get(s, 0) + 1
    assert all(20 <= n_of[s.speaker] <= 200 for s in sp.part("B"))
    assert all(2 <= n_of[s.speaker] <= 5 for s in sp.part("C"))
    held = {c for p in "BC" for s in sp.part(p) for c in s.held_out}
    assert not held & {c for c, _ in sp.source_train()}
    assert len(sp.source_train()) > 3000


# --- one person's train / validation split -------------------------------------------


def test_split_by_conversation_holds_out_whole_conversations():
    from persona_sdk.split import split_by_conversation

    items = [(c, k) for c in range(20) for k in range(3)]  # (conversation, reply)
    train, val = split_by_conversation(items, 0.1, seed=0, conversation=lambda e: e[0])
    held = {c for c, _ in val}
    assert len(held) == 2 and held.isdisjoint({c for c, _ in train}) and len(train) + len(val) == 60
    assert train == [e for e in items if e[0] not in held]  # order kept
    assert split_by_conversation(items, 0.1, seed=0, conversation=lambda e: e[0]) == (train, val)
    assert split_by_conversation(items, 0.1, seed=1, conversation=lambda e: e[0])[1] != val
    # never everything, at least one conversation; fraction 0 holds out nothing
    two = items[:6]
    assert len({c for c, _ in split_by_conversation(two, 0.9, 0, conversation=lambda e: e[0])[0]}) == 1
    assert split_by_conversation(items, 0.0, 0, conversation=lambda e: e[0]) == (items, [])
    # one conversation: its last replies, by position
    one = [(0, k) for k in range(10)]
    assert split_by_conversation(one, 0.2, 0, conversation=lambda e: e[0]) == (one[:8], one[8:])
    assert split_by_conversation(one[:2], 0.1, 0, conversation=lambda e: e[0]) == (one[:1], one[1:2])
    with pytest.raises(ConfigError):
        split_by_conversation(items, 1.0, 0)


def test_enrollment_and_trainer_split_the_same_way(tmp_path):
    """One splitter: build_examples' validation part is what train_prefix holds out when given none."""
    from persona_sdk.chats import load_chats
    from persona_sdk.split import split_by_conversation

    from enroll_helpers import write_chats

    chats = load_chats(write_chats(tmp_path / "chats.json", n_conversations=25))
    built = build_examples(chats, "Ana", val_fraction=0.1, seed=7)
    train, val = split_by_conversation(built.train + built.val, 0.1, seed=7)
    assert sorted(map(id, train)) == sorted(map(id, built.train)) and sorted(map(id, val)) == sorted(map(id, built.val))
    assert built.report.val_conversations == len({e.conversation for e in val}) == 2
