"""Golden example lists, token budgets, dedup, the split and too-little-data."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from persona_sdk.chats import MEDIA, Chats, Conversation, Message, load_chats
from persona_sdk.conversation import ASSISTANT, USER, ChatFormat, Turn, count_tokens_fn, render_turn
from persona_sdk.errors import ConfigError, TooLittleDataError
from persona_sdk.reply_examples import (
    DROP_DUPLICATE,
    DROP_EMPTY,
    DROP_NO_CONTEXT,
    DROP_PLACEHOLDER,
    MIN_REPLIES,
    Example,
    build_examples,
)

FIX = Path(__file__).parent / "fixtures" / "chats"
U, A = USER, ASSISTANT


def _all(ex):
    return sorted(ex.train + ex.val, key=lambda e: e.conversation)


def test_golden_whatsapp_android():
    ex = build_examples(load_chats(FIX / "whatsapp_android_12h.txt"), "alice", min_replies=0)
    assert _all(ex) == [
        Example((Turn(U, "hey, back from the trip?"),), "yes! still jetlagged\nthe flight was 14 hours", 0),
        Example((Turn(U, "hey, back from the trip?"), Turn(A, "yes! still jetlagged\nthe flight was 14 hours"),
                 Turn(U, "look at this view")), "wow 😍\nwhere is that?", 0),
        Example((Turn(A, "good morning! plans for tonight?"), Turn(U, "party at Sam's: bring snacks")),
                "my calendar says\n12/31/23 dinner at 9\nso I can come after", 1),
    ]
    r = ex.report
    assert (r.conversations, r.my_messages, r.my_turns, r.examples) == (2, 6, 4, 3)
    assert r.dropped == {DROP_NO_CONTEXT: 1, DROP_PLACEHOLDER: 1}
    assert r.senders == {"Bob Stone": 7, "Alice": 6}
    assert r.formats == ("whatsapp",)


def test_golden_group_chat_keeps_speakers_apart():
    ex = build_examples(load_chats(FIX / "whatsapp_group_24h_dayfirst.txt"), "Alice", min_replies=0)
    got = _all(ex)
    assert got[0] == Example((Turn(U, "who is bringing the cake?"), Turn(U, "me 🎂\nchocolate ok?")),
                             "שלום! chocolate is perfect", 0)
    assert got[1].context[-1] == Turn(U, "great: see you at 9") and got[1].reply.startswith("مرحبا")
    assert got[2] == Example((Turn(U, "happy new year!"),), "happy new year 🥳", 1)


def test_golden_chats_json_empty_and_placeholder_not_replies():
    ex = build_examples(load_chats(FIX / "chats.json"), "Alice", min_replies=0)
    assert _all(ex) == [
        Example((Turn(U, "hey, back from the trip?"),), "yes! still jetlagged", 0),
        Example((Turn(U, "hey, back from the trip?"), Turn(A, "yes! still jetlagged"), Turn(U, "how was it?")),
                "amazing\n10/10 would go again", 0),
        Example((Turn(A, "morning"), Turn(U, "look!")), "so cute", 1),
    ]
    assert ex.report.dropped == {DROP_NO_CONTEXT: 1, DROP_EMPTY: 1}


def test_golden_telegram_and_discord():
    tg = _all(build_examples(load_chats(FIX / "telegram_single.json"), "Alice", min_replies=0))
    assert [e.reply for e in tg] == ["yes, what a goal 🤯", "watched it twice", "sure!"]
    assert tg[1].context[-1] == Turn(U, "https://example.org/replay replay")
    dc = _all(build_examples(load_chats(FIX / "discord.json"), "ALICE", min_replies=0))
    assert [(len(e.context), e.reply) for e in dc] == [(2, "I did! muddy but worth it"), (4, "thanks 🙂")]


def _dialog(n_convs: int, per_conv: int, me="me", other="you") -> Chats:
    convs = []
    for c in range(n_convs):
        msgs = []
        for i in range(per_conv):
            msgs.append(Message(other, f"question {c} {i} " + "word " * (i % 5)))
            msgs.append(Message(me, f"answer {c} {i}"))
        convs.append(Conversation(str(c), tuple(msgs), "chats"))
    return Chats(tuple(convs), None, ("chats",))


def test_context_budget_drops_oldest_and_keeps_newest():
    chats = _dialog(1, 10)
    count = len  # characters as tokens: easy to reason about
    ex = build_examples(chats, "me", count_tokens=count, context_budget=120, max_context_turns=8, min_replies=0)
    for e in ex.train + ex.val:
        sizes = [len(render_turn(t)) for t in e.context]
        assert sum(sizes) <= 120 or len(e.context) == 1
        assert e.context[-1].role == U
    last = _all(ex)[-1]
    assert len(last.context) < 8  # budget, not the turn limit, cut it
    tiny = build_examples(chats, "me", count_tokens=count, context_budget=1, min_replies=0)
    assert all(len(e.context) == 1 for e in tiny.train + tiny.val)  # newest turn always kept
    wide = build_examples(chats, "me", context_budget=10_000, max_context_turns=3, min_replies=0)
    assert max(len(e.context) for e in wide.train + wide.val) == 3


def test_budget_with_real_chat_format(tmp_path):
    from conftest import build_tiny_tokenizer  # the tokenizer alone: no torch model needed

    build_tiny_tokenizer(tmp_path)
    fmt = ChatFormat(Tokenizer.from_file(str(tmp_path / "tokenizer.json")))
    ex = build_examples(_dialog(2, 6), "me", count_tokens=count_tokens_fn(fmt), context_budget=40, min_replies=0)
    for e in ex.train + ex.val:
        if len(e.context) > 1:
            assert sum(len(fmt.turn_ids(t)) for t in e.context) <= 40
        ids, n_prompt = fmt.example_ids(e.context, e.reply, context_budget=64)
        assert 0 < n_prompt < len(ids)


def test_duplicates_dropped():
    conv = (Message("you", "hi"), Message("me", "hey"))
    chats = Chats(tuple(Conversation(str(i), conv, "chats") for i in range(3)), None, ("chats",))
    ex = build_examples(chats, "me", min_replies=0)
    assert ex.report.examples == 1 and ex.report.dropped == {DROP_DUPLICATE: 2}


def test_split_by_conversation_deterministic_for_seed():
    chats = _dialog(20, 5)
    a = build_examples(chats, "me", seed=3, val_fraction=0.2)
    b = build_examples(chats, "me", seed=3, val_fraction=0.2)
    c = build_examples(chats, "me", seed=4, val_fraction=0.2)
    assert a.train == b.train and a.val == b.val
    val_convs = {e.conversation for e in a.val}
    assert len(val_convs) == 4 and val_convs.isdisjoint({e.conversation for e in a.train})
    assert val_convs != {e.conversation for e in c.val}
    assert a.report.train + a.report.val == a.report.examples == 100
    assert (a.report.train_conversations, a.report.val_conversations) == (16, 4)


def test_single_conversation_splits_by_position():
    ex = build_examples(_dialog(1, 60), "me")
    assert (ex.report.train, ex.report.val) == (54, 6)
    assert ex.val[0].reply == "answer 0 54" and ex.report.split.startswith("by position")


def test_too_little_data_says_found_and_minimum():
    assert MIN_REPLIES == 50
    with pytest.raises(TooLittleDataError, match=r"found 49 usable replies.*at least 50"):
        build_examples(_dialog(7, 7), "me")  # 49 replies
    assert build_examples(_dialog(5, 10), "me").report.examples == 50


def test_bad_settings_rejected():
    for kwargs in ({"context_budget": 0}, {"max_context_turns": 0}, {"val_fraction": 1.0}, {"min_replies": -1}):
        with pytest.raises(ConfigError):
            build_examples(_dialog(1, 2), "me", **kwargs)


def test_media_from_others_is_not_context():
    conv = (Message("you", "", kind=MEDIA), Message("you", "see?"), Message("me", "nice"))
    ex = build_examples(Chats((Conversation("0", conv, "chats"),), None, ()), "me", min_replies=0)
    assert _all(ex) == [Example((Turn(U, "see?"),), "nice", 0)]


@pytest.mark.parametrize("name", ["whatsapp_android_12h.txt", "whatsapp_group_24h_dayfirst.txt", "chats.json",
                                  "telegram_full_export.json", "discord.json"])
def test_counting_only_gives_the_same_report_without_keeping_examples(name):
    chats = load_chats(FIX / name)
    me = chats.sender_counts().most_common(1)[0][0]
    for fraction in (0.1, 0.5):
        kept = build_examples(chats, me, min_replies=0, val_fraction=fraction)
        counted = build_examples(chats, me, min_replies=0, val_fraction=fraction, keep=False)
        assert counted.train == [] and counted.val == []
        assert vars(counted.report) == vars(kept.report)


def test_many_conversations_count_only_report_matches():
    chats = _dialog(20, 5)
    assert vars(build_examples(chats, "me", keep=False).report) == vars(build_examples(chats, "me").report)


def test_a_hash_collision_never_drops_a_distinct_example(monkeypatch):
    import persona_sdk.reply_examples as examples_mod

    convs = [(Message("you", f"question {i}"), Message("me", f"answer {i}")) for i in range(3)]
    convs.append(convs[0])  # one true duplicate
    chats = Chats(tuple(Conversation(str(i), c, "chats") for i, c in enumerate(convs)), None, ("chats",))
    monkeypatch.setattr(examples_mod, "hash", lambda value: 42, raising=False)  # every example collides
    ex = build_examples(chats, "me", min_replies=0)
    assert ex.report.examples == 3 and ex.report.dropped == {DROP_DUPLICATE: 1}
    assert sorted(e.reply for e in ex.train + ex.val) == ["answer 0", "answer 1", "answer 2"]
