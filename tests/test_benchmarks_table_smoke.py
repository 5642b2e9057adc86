"""benchmarks/personapkt_table.py runs every setting end to end on the tiny backbone and a tiny
synthetic chitchat-format corpus (smoke test), writes table/JSON/PNG with every column, and resumes
from its cache."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench_helpers import load_benchmark

WORDS = "hey back from the trip yes still jetlagged what do you on weekends mostly hiking and cooking pizza music".split()


def _load():
    return load_benchmark("personapkt_table")


def _corpus(path: Path) -> Path:
    """Chitchat-format conversations: 4 regular speakers (11 conversations each with a pool of
    partners), 3 few-shot speakers (3 conversations each), partners also talking to each other."""
    rng = random.Random(0)
    partners = [f"p{i}" for i in range(8)]
    pairs = [(f"reg{r}", partners[(r + k) % len(partners)]) for r in range(4) for k in range(11)]
    pairs += [(f"few{f}", partners[(f + k) % len(partners)]) for f in range(3) for k in range(3)]
    pairs += [(partners[i], partners[(i + 1) % len(partners)]) for i in range(len(partners))]
    data = {}
    for n, (a, b) in enumerate(pairs):
        groups = []
        for t in range(6):
            who = a if t % 2 == 0 else b
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + f" {who[:3]}!"
            groups.append([{"text": text, "timestamp": f"2020-01-01T00:{n % 60:02d}:{t:02d}Z", "sender": who}])
        data[f"conv-{n}"] = {"messages": groups}
    path.write_text(json.dumps(data))
    return path


SMOKE = ["--b-speakers", "3", "--c-speakers", "2", "--max-train", "8", "--max-val", "4", "--epochs", "1",
         "--evals-per-epoch", "1", "--test-replies", "2", "--hits-replies", "1", "--decode-replies", "2",
         "--distractors", "2", "--max-new-tokens", "4", "--source-steps", "2", "--source-speakers", "4",
         "--source-per-speaker", "4", "--source-val", "4", "--reptile-speakers", "1", "--reptile-outer-steps", "1",
         "--reptile-inner-steps", "1", "--batch-size", "4", "--split-n-b", "3", "--split-n-c", "2",
         "--split-b-min", "10", "--threads", "1"]


def test_personapkt_table_smoke(tiny_backbone, tiny_onnx, tmp_path, capsys):
    bench = _load()
    corpus = _corpus(tmp_path / "dataset.json")
    out = tmp_path / "out"
    argv = ["--backbone", str(tiny_backbone), "--export", str(tiny_onnx), "--corpus", str(corpus), "--out", str(out),
            *SMOKE]
    results = bench.main(argv)

    for name in ("table.md", "results.json", "quality_vs_epochs.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "quality_vs_epochs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["parts"]) == {"B", "C"}
    for part, pr in saved["parts"].items():
        assert set(pr["settings"]) == set(bench.PKT_ROWS), part
        for key, row in pr["settings"].items():
            assert row["speakers"] >= 1, (part, key)
            assert math.isfinite(row["perplexity_median"]) and row["perplexity_median"] > 1
            assert row["hits_at_1"] is not None and 0 <= row["hits_at_1"] <= 1
            for d in bench.DECODINGS:
                assert set(row[d]) >= {"f1", "bleu1", "bleu2", "rouge_l", "dist1", "dist2"}, (part, key, d)
            if key in bench.PERSONAL:
                assert 0 <= row["ident_all"] <= 1 and row["ident_all_k"] == pr["k_all"] >= 2
                assert 0 < row["stored_params_pct"] < 100 and row["enroll_seconds_median"] > 0
                assert pr["curves"][key] and all(c[0][0] == 0.0 for c in pr["curves"][key])
        assert pr["settings"]["backbone"]["stored_params_pct"] == 0
        assert pr["settings"]["reptile-full"]["stored_params_pct"] == 100
        assert pr["settings"]["reptile-full"]["speakers"] == 1
    assert saved["meta"]["size"]["epochs"] == 1 and saved["meta"]["export_variant"] == "fp32"
    table = (out / "table.md").read_text()
    for column in bench.COLUMNS:
        assert column in table
    for label in (bench.SETTINGS[k] for k in bench.PKT_ROWS):
        assert label in table
    assert "## Part B — decoding: beam 5" in table and "## Part C — decoding: chat defaults" in table
    assert results["parts"]["B"]["speakers"] == 3

    # resumable: a second run reuses every cached unit (no training, same numbers)
    capsys.readouterr()
    again = bench.main(argv)
    err = capsys.readouterr().err
    assert ": training (" not in err and "source prefix '" not in err and "fine-tuning" not in err, err
    assert again["parts"]["B"]["settings"]["base"] == results["parts"]["B"]["settings"]["base"]
    # a different size never mixes with the cache of another
    with pytest.raises(SystemExit, match="different configuration"):
        bench.main([*argv, "--epochs", "2"])


def test_estimate_only_plans_without_training(tiny_backbone, tmp_path):
    bench = _load()
    corpus = _corpus(tmp_path / "dataset.json")
    plan = bench.main(["--backbone", str(tiny_backbone), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
                       "--estimate-only", *SMOKE])
    assert plan["speakers"] == {"B": 3, "C": 2}
    assert plan["estimate"]["total"] > plan["estimate"]["train"] > 0
    assert not (tmp_path / "o").exists()


def test_identification_at_k20_and_all_on_a_known_matrix():
    import numpy as np

    bench = _load()
    people = [bench.Person(f"s{i}", "B", [], [], [object(), object()]) for i in range(25)]
    owners = np.repeat(np.arange(25), 2)  # (N,) = 50 replies, 2 per speaker
    m = np.ones((25, 50))  # (K, N)
    m[owners, np.arange(50)] = 0.5  # every prefix explains its own speaker's replies best...
    m[0, 48:] = 0.1  # ...except that speaker 0's prefix steals speaker 24's replies (outside the first 20)
    rows = {p.speaker: list(m[k]) for k, p in enumerate(people)}
    out = bench.identification(rows, people)
    assert out["ident_k20"] == 1.0  # speaker 24 is not among the first 20: K = 20 is perfect
    assert out["ident_all"] == 24 / 25 and out["ident_all_k"] == 25
    assert bench.identification({"s0": [0.0, 0.0]}, people[:1])["ident_all"] is None  # K = 1: undefined


def test_spread_picks_evenly_and_all_when_asked():
    bench = _load()
    assert bench.spread(10, 3) == [0, 4, 9]  # numpy rounds 4.5 to even
    assert bench.spread(5, 0) == list(range(5)) and bench.spread(3, 8) == [0, 1, 2]


# --- the voice preset: real `persona enroll` processes on the tiny backbone ------------------------
VOICE_STYLES = {  # speaker -> (how a reply starts, its words, how it ends, conversations, replies in each)
    "ana": ("", "lol yeah my cat zebra naps all day and i knit".split(), "", 14, 8),
    "bo": ("Well, ", "The hiking trail near the river was Great this Weekend".split(), "!", 14, 8),
    # 9 train conversations x 4 replies: fewer than enrollment's minimum, so `persona enroll` refuses
    "cy": ("Hmm ", "pizza music guitar band concert tonight maybe".split(), " :)", 11, 4),
}
PARTNER_WORDS = "hey how was your week what did you do anything fun planned".split()


def _voice_corpus(path: Path) -> Path:
    """Chitchat-format conversations: three regular speakers, each with a style of their own, talking
    to six partners (two with enough replies to enroll, one with too few)."""
    rng = random.Random(1)
    partners = [f"p{i}" for i in range(6)]
    data = {}
    n = 0
    for s, (start, words, end, n_conv, per_conv) in VOICE_STYLES.items():
        for k in range(n_conv):
            partner = partners[(k + len(s) * 3) % len(partners)]
            groups = []
            for t in range(2 * per_conv):
                who = partner if t % 2 == 0 else s
                if who == s:
                    text = start + " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + end
                else:
                    text = " ".join(rng.choice(PARTNER_WORDS) for _ in range(rng.randint(3, 8))) + "?"
                groups.append([{"text": text, "timestamp": f"2020-01-{1 + n % 28:02d}T00:00:{t:02d}Z", "sender": who}])
            data[f"voice-{n}"] = {"messages": groups}
            n += 1
    path.write_text(json.dumps(data))
    return path


VOICE_SMOKE = ["--size", "voice20", "--b-speakers", "3", "--max-minutes", "0.75", "--test-replies", "4",
               "--ident-replies", "2", "--voice-contexts", "3", "--reference-contexts", "2", "--voice-seeds", "2",
               "--split-n-b", "3",
               "--split-n-c", "0", "--split-b-min", "10", "--threads", "1"]


def _tiny_source(tiny_backbone: Path, out: Path) -> Path:
    """A source prefix for the tiny backbone (the shipped one is for the default backbone)."""
    import numpy as np

    from persona_sdk.backbone import fingerprint
    from persona_sdk.prefix import Prefix
    from persona_sdk.source import save_source

    kv = np.random.default_rng(0).normal(size=(2, 2, 2, 16, 16)).astype(np.float32) * 0.1  # (layers, 2, kv, P, hd)
    return save_source(Prefix(kv, fingerprint(tiny_backbone), "prefix"), out, {"command": "test"})


def test_voice_preset_end_to_end(tiny_backbone, tiny_onnx, tmp_path, capsys, monkeypatch):
    import tempfile

    bench = _load()
    corpus = _voice_corpus(tmp_path / "dataset.json")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where the speakers' chats.json files go
    out = tmp_path / "out"
    argv = ["--backbone", str(tiny_backbone), "--export", str(tiny_onnx), "--corpus", str(corpus), "--out", str(out),
            "--source-prefix", str(_tiny_source(tiny_backbone, tmp_path / "source")), *VOICE_SMOKE]
    results = bench.main(argv)
    err = capsys.readouterr().err

    # every enrollment was a real `persona enroll` process, measured on its own
    assert err.count(": enrolling with `persona enroll`") == 3, err
    assert set(results["enrollments"]) == set(results["speakers"]) and len(results["speakers"]) == 3
    records = list(results["enrollments"].values())
    enrolled = [e for e in records if e["ok"]]
    assert len(enrolled) == 2
    for e in enrolled:
        assert e["returncode"] == 0 and not e["timed_out"] and 0 < e["wall_seconds"] < 300
        assert 50e6 < e["peak_rss_bytes"] < 8e9  # a python + torch process, in bytes
        assert e["profile"]["steps"] >= 1 and e["profile"]["source"] == "file"
        assert e["train_replies"] >= 50
    refused = next(e for e in records if not e["ok"])  # the speaker with too few replies: a clear error
    assert refused["returncode"] != 0 and refused["train_replies"] < 50 and "repl" in refused["reason"], refused
    assert "profile" not in refused and 0 < refused["peak_rss_bytes"]
    assert results["meta"]["enroll_command"][:3] == ["persona", "enroll", "chats.json"]
    assert "--max-minutes" in results["meta"]["enroll_command"]
    assert list(tmp.iterdir()) == []  # the chats.json folders are gone
    assert not list(out.rglob("chats.json"))
    profiles = list((out / "cache" / "persona-home").rglob("*.persona"))
    assert len(profiles) == 2 and all(b"lol" not in p.read_bytes() for p in profiles)  # encrypted

    # rows, identification, voice metrics
    rows = results["rows"]
    assert set(rows) == {"real", *bench.VOICE_ROWS}
    for key in bench.VOICE_ROWS:
        assert rows[key]["speakers"] == (2 if key == "enroll" else 3), key  # no persona for the refused one
        assert math.isfinite(rows[key]["perplexity_median"]), key
        assert 0 <= rows[key]["lowercase_within_tolerance"] <= 1 and rows[key]["median_words_median"] > 0
        assert rows[key]["attribution"] is not None
    # every context answered once per generation seed (2 here), pooled per speaker
    assert rows["enroll"]["generated_replies"] == 2 * 3 * 2 and rows["backbone"]["generated_replies"] == 3 * 2 * 2
    assert rows["enroll"]["enrolled"] == 2
    assert results["identification"]["k"] == 2 and 0 <= rows["enroll"]["ident_all"] <= 1
    detail = load_benchmark("ident_detail")  # its reading of the cached matrix gives the table's figure
    assert detail.summary(*detail.load(out)[:2])["top1_macro"] == pytest.approx(rows["enroll"]["ident_all"])
    assert rows["enroll"]["ident_k20"] is None  # K = 2
    assert results["voice"]["k"] == 3 and rows["real"]["attribution"] is not None  # attribution: every speaker
    assert math.isfinite(rows["enroll"]["gain_vs_source_median"])

    # the bars: each stated, with whether it holds and by how much it misses
    bars = {b["key"]: b for b in results["bars"]}
    assert list(bars) == [k for k, _, _ in bench.VOICE_BARS]
    for b in bars.values():
        assert b["value"] is not None and b["holds"] in (True, False, None), b
        assert (b["miss"] is None) == (b["holds"] is None) and (b["miss"] is None or b["miss"] >= 0), b
    assert bars["attribution"]["holds"] is None and bars["identification"]["holds"] is None  # K = 2, not 20
    assert bars["enroll_wall"]["holds"] is True and bars["enroll_wall"]["value"] < 5
    assert bars["enrolled"]["holds"] is False and bars["enrolled"]["miss"] == pytest.approx(1 / 3)
    assert bars["enroll_rss"]["value"] == max(e["peak_rss_bytes"] for e in results["enrollments"].values()) / 1e9
    for b in bars.values():
        if b["holds"] is not None:
            assert b["holds"] == (b["miss"] == 0), b

    saved = json.loads((out / "results.json").read_text())
    assert saved["bars"] == json.loads(json.dumps(results["bars"]))
    assert {"command", "commit", "date", "size", "stage_seconds", "stage_seconds_all_runs", "estimate"} <= set(saved["meta"])
    assert saved["meta"]["stage_seconds_all_runs"]["enroll"] >= sum(e["wall_seconds"] for e in results["enrollments"].values())
    text = (out / "results.json").read_text()
    assert "zebra" not in text and "lol" not in text  # numbers only: no reply text
    table = (out / "table.md").read_text()
    for _, what, target in bench.VOICE_BARS:
        assert what in table and target in table
    for key in bench.VOICE_ROWS:
        assert bench.SETTINGS[key] in table
    assert "ceiling" in table and "## Per speaker" in table
    assert "length pull 5 toward the conversation target, personas only" in table  # the sampler is said

    # the chat-time length pull, measured on the same profiles (benchmarks/length_control.py)
    from persona_sdk.config import LENGTH_PULL, GenerationConfig
    from persona_sdk.voice import profile_reply_tokens

    vault = bench._Home((out / "cache" / "persona-home").resolve()).vault()
    kept = [profile_reply_tokens(vault.load(n, bench.VOICE_PASSPHRASE).meta) for n in vault.list()]
    assert len(kept) == 2 and all(isinstance(n, int) and n >= 1 for n in kept)  # persona enroll kept the length
    lc_mod = load_benchmark("length_control")
    from persona_sdk.conversation import ChatFormat
    from persona_sdk.split import SplitConfig
    from tokenizers import Tokenizer

    run = json.loads((out / "cache" / "run.json").read_text())
    fmt = ChatFormat(Tokenizer.from_file(str(tiny_backbone / "tokenizer.json")))
    chats, people, _ = bench.load_voice_people(str(corpus), SplitConfig(**run["split"]), bench.VoiceSize(**run["size"]),
                                               lambda t: len(fmt.encode(t)))
    for person in people:  # the length a profile enrolled before it was kept gets is what enrollment keeps
        if vault.exists(person.profile):
            kept_now = profile_reply_tokens(vault.load(person.profile, bench.VOICE_PASSPHRASE).meta)
            assert lc_mod.enrollment_target(bench, chats, person, fmt) == kept_now
    lc = lc_mod.main(
        ["--table-out", str(out), "--out", str(tmp_path / "lc"), "--backbone", str(tiny_backbone), "--export",
         str(tiny_onnx), "--corpus", str(corpus), "--pulls", "0,4", "--threads", "1", "--seeds", "0,1000",
         "--variants", "default", f"pull={LENGTH_PULL:g},length_from={GenerationConfig().length_from}"])
    spelled = f"pull={LENGTH_PULL:g},length_from={GenerationConfig().length_from}"
    assert lc["variants"] == ["before", "pull=0", "pull=4", "default", spelled]
    assert lc["speakers"] == 2 and lc["pooled"] is not None
    for table_file in (out / "cache" / "voice" / "generate" / "enroll").glob("*.json"):
        table_replies = json.loads(table_file.read_text())["replies"]  # seed 0's, then seed 1000's
        for v in ("default", spelled):  # the chat defaults, named or spelled out, are what the table generated
            mine = [r for seed in (0, 1000) for r in json.loads(
                (tmp_path / "lc" / f"seed-{seed}" / "cache" / v / table_file.name).read_text())["replies"]]
            assert mine == table_replies, v
    for v in lc["variants"]:
        assert 0 <= lc["mean"][v]["length_within_tolerance"] <= 1
        seeds = [lc["per_seed"][s]["aggregate"][v] for s in (0, 1000)]
        assert lc["mean"][v] == pytest.approx({k: (x + seeds[1][k]) / 2 for k, x in seeds[0].items()
                                               if isinstance(x, float)})  # the mean over the seeds
    assert "lol" not in (tmp_path / "lc" / "results.json").read_text()

    # a multi-turn chat through PersonaAgent with the same profiles (benchmarks/chat_drift.py)
    drift = load_benchmark("chat_drift").main(
        ["--table-out", str(out), "--backbone", str(tiny_backbone), "--export", str(tiny_onnx), "--corpus", str(corpus),
         "--speakers", "1", "--turns", "3", "--threads", "1"])
    assert drift["speakers"] == 1 and drift["pulls"] == [f"{LENGTH_PULL:g}", "0"]
    row = drift["rows"][0]
    assert all(len(w) == 3 and all(n >= 0 for n in w) for w in row["words"].values()) and row["usual_tokens"] >= 1

    # resumable: a second run enrolls nothing and gives the same numbers
    again = bench.main(argv)
    err = capsys.readouterr().err
    assert "enrolling" not in err and "scoring" not in err and "answering" not in err, err
    assert again["rows"] == results["rows"] and again["bars"] == results["bars"]
    assert again["meta"]["stage_seconds_all_runs"]["enroll"] >= results["meta"]["stage_seconds_all_runs"]["enroll"]
    assert again["meta"]["stage_seconds"]["enroll"] < 5  # nothing enrolled this time


def test_voice_estimate_only(tiny_backbone, tmp_path):
    bench = _load()
    corpus = _voice_corpus(tmp_path / "dataset.json")
    plan = bench.main(["--backbone", str(tiny_backbone), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
                       "--estimate-only", *VOICE_SMOKE, "--max-minutes", "5"])
    assert plan["speakers"] == {"B": 3}
    est = plan["estimate"]
    assert est["enroll"] == 3 * (5 * 60 + bench.VOICE_COST["enroll_overhead"])
    assert est["identification"] == 2 * 3 * 2 * bench.VOICE_COST["forward"]  # (K-1) x 2 replies x 3 speakers
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    assert not (tmp_path / "o").exists()


def test_voice_chats_json_gives_enrollment_the_same_examples(tmp_path):
    """The chats.json a speaker is enrolled from holds exactly their train conversations: read back,
    it yields the examples the table treats as that speaker's training replies (and none of the test)."""
    from persona_sdk.chats import load_chats
    from persona_sdk.split import SplitConfig, chitchat_split

    bench = _load()
    chats, split = chitchat_split(str(_voice_corpus(tmp_path / "dataset.json")), SplitConfig(n_b=3, n_c=0, b_min=10))
    count = lambda t: len(t.split())  # noqa: E731
    s = max(split.part("B"), key=lambda s: len(s.train))
    n = bench.write_chats_json(chats, s.train, tmp_path / "chats.json")
    back = load_chats(tmp_path / "chats.json")
    assert n == len(s.train) == len(back.conversations) and {c.id for c in back.conversations} == set(s.train)
    mine = bench.examples_of(back, s.train, s.speaker, count, 112)
    want = bench.examples_of(chats, s.train, s.speaker, count, 112)
    assert [(e.context, e.reply) for e in mine] == [(e.context, e.reply) for e in want] and len(want) >= 50
    test = {e.reply for e in bench.examples_of(chats, s.test, s.speaker, count, 112)}
    assert not {c.id for c in back.conversations} & set(s.test) and test


def test_voice_bars_say_how_far_each_misses():
    bench = _load()
    rows = {"real": {"attribution": 0.5},
            "enroll": {"length_within_tolerance": 0.8, "lowercase_within_tolerance": 0.5, "attribution": 0.30,
                       "ident_k20": 0.65, "ident_all": 0.7, "gain_vs_source_median": 0.04}}
    enrollments = {"a": {"ok": True, "wall_seconds": 290.0, "peak_rss_bytes": 2.5e9},
                   "b": {"ok": True, "wall_seconds": 320.0, "peak_rss_bytes": 3.4e9},
                   "c": {"ok": False, "wall_seconds": 12.0, "peak_rss_bytes": 0.3e9}}
    bars = {b["key"]: b for b in bench.voice_bars(rows, enrollments, 20, 20)}
    assert bars["length"]["holds"] is True and bars["length"]["miss"] == 0
    assert bars["lowercase"]["holds"] is False and bars["lowercase"]["miss"] == pytest.approx(0.25)
    assert bars["attribution"]["holds"] is False and bars["attribution"]["miss"] == pytest.approx(0.05)
    assert "50.0%" in bars["attribution"]["note"]  # the ceiling
    assert bars["identification"]["holds"] is True and bars["identification"]["value"] == 0.65
    assert bars["gain"]["holds"] is False and bars["gain"]["miss"] == pytest.approx(0.06)
    assert bars["enroll_wall"]["holds"] is False and bars["enroll_wall"]["miss"] == pytest.approx(20 / 60)
    assert bars["enroll_rss"]["holds"] is False and bars["enroll_rss"]["miss"] == pytest.approx(0.4)
    assert bars["enrolled"]["holds"] is False and bars["enrolled"]["value"] == pytest.approx(2 / 3)
    at_k3 = {b["key"]: b for b in bench.voice_bars(rows, enrollments, 3, 3)}
    assert at_k3["identification"]["holds"] is None and at_k3["identification"]["value"] == 0.7
    assert at_k3["identification"]["miss"] is None  # a miss at K = 3 says nothing about K = 20
    assert at_k3["attribution"]["holds"] is None and "not the bar's K = 20" in at_k3["attribution"]["note"]


def test_voice_noise_floor_smoke(tmp_path, tiny_backbone, capsys):
    """benchmarks/voice_noise_floor.py on the made-up corpus: probabilities per speaker, their means in [0, 1]."""
    floor = load_benchmark("voice_noise_floor")
    out = floor.main(["--corpus", str(_voice_corpus(tmp_path / "dataset.json")), "--backbone", str(tiny_backbone),
                      "--n-b", "3", "--n-c", "0", "--b-min", "10", "--draws", "20"])
    assert out["speakers"] >= 2 and out["sample"] == 16
    for row in out["rows"]:
        assert 0 <= row["p_length"] <= 1 and 0 <= row["p_lowercase"] <= 1 and row["held_out"] > 0
    assert 0 <= out["length_share"] <= 1 and 0 <= out["lowercase_share"] <= 1
    within = [abs(r["train_ratio"] - 1) <= floor.LENGTH_BAND for r in out["rows"]]
    assert all(r["train_ratio"] > 0 for r in out["rows"]) and out["train_median_share"] == sum(within) / len(within)
    for key in ("conversation", "blend"):  # the length pull's other targets, from each context's own turns
        within = [abs(r[f"{key}_ratio"] - 1) <= floor.LENGTH_BAND for r in out["rows"]]
        assert all(r[f"{key}_ratio"] > 0 for r in out["rows"]) and out[f"{key}_median_share"] == sum(within) / len(within)
    assert all(0 < r["contexts_with_own_turns"] <= 1 for r in out["rows"])  # alternating chats: own turns seen
    printed = capsys.readouterr().out
    assert "expected share" in printed and "training median as the prediction" in printed
    assert "earlier turns in each held-out conversation" in printed


def test_length_control_variants_are_generation_settings():
    from persona_sdk.errors import ConfigError

    lc = load_benchmark("length_control")
    assert lc.parse_setting("pull=5,temperature=0.5") == {"length_pull": 5.0, "temperature": 0.5}
    assert lc.parse_setting("top_k=20") == {"top_k": 20}
    assert lc.parse_setting("pull=5,length_from=conversation") == {"length_pull": 5.0, "length_from": "conversation"}
    with pytest.raises(ConfigError, match="length_from"):
        lc.parse_setting("length_from=mood")
    with pytest.raises(SystemExit):
        lc.parse_setting("pull=lots")
    with pytest.raises(ConfigError, match="allowed"):
        lc.parse_setting("warmth=2")
    with pytest.raises(ConfigError, match="length_pull"):
        lc.parse_setting("pull=-1")
    assert lc.parse_pulls("0, 3,5") == [0.0, 3.0, 5.0]
    with pytest.raises(SystemExit):
        lc.parse_pulls("-1")
