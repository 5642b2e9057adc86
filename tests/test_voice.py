"""persona_sdk.voice: every metric on hand-made inputs with known answers, the training
fingerprint (digests), the shipped background table and its builder."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from persona_sdk import voice as vm
from persona_sdk.conversation import Turn
from persona_sdk.errors import MetricError
from persona_sdk.reply_examples import Example
from persona_sdk.prefix import Prefix

from bench_helpers import load_benchmark


def _numbers_only(obj) -> bool:
    """Every leaf is a number, bool or None; every key a short identifier (no text)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _numbers_only(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_numbers_only(v) for v in obj)
    return obj is None or isinstance(obj, (int, float, bool))


# --- length ------------------------------------------------------------------------
def test_median_words_and_length_ratio():
    assert vm.median_words(["a b", "a b c d", "x"]) == 2.0
    assert vm.median_words(["a b", "a b c d"]) == 3.0
    assert vm.length_ratio(["one two three four"], ["one two"]) == 2.0
    assert vm.length_ratio(["a b"], ["", "", "x"]) is None  # the real median is 0
    with pytest.raises(MetricError):
        vm.median_words([])


# --- surface style -------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("hey there", True), ("Hey there", False), ("\U0001F602 lol", True), ("123", False),
    ("i think so", True), ("  ok", True), ("...OK", False), ("", False),
])
def test_starts_lowercase(text, want):
    assert vm.starts_lowercase(text) is want


@pytest.mark.parametrize("text, want", [
    ("ok", True), ("ok.", False), ("great :)", True), ("great! :)", False), ("what?", False),
    ("yes \U0001F602", True), ("\U0001F602", True), ("ok...", False), ("fine\n", True), ("(really)", False),
])
def test_ends_without_punctuation(text, want):
    assert vm.ends_without_punctuation(text) is want


@pytest.mark.parametrize("text, want", [
    ("lol \U0001F602", True), ("nice :)", True), ("love you <3", True), ("haha xD", True), ("\u2764 you", True),
    ("see http://x.com", False), ("at 10:30", False), ("no", False), ("(item 8)", False), ("a: b", False),
])
def test_has_emoji(text, want):
    assert vm.has_emoji(text) is want


def test_exclaim_question_and_multi_message():
    assert vm.has_exclaim_or_question("what?") and vm.has_exclaim_or_question("wow!")
    assert not vm.has_exclaim_or_question("ok.")
    assert vm.is_multi_message("hi\nhow are you") and not vm.is_multi_message("hi") and not vm.is_multi_message("hi\n")


def test_style_stats_shares():
    texts = ["hey!", "Sure.", "lol \U0001F602\nwait", "ok"]
    st = vm.style_stats(texts)
    assert st.replies == 4 and st.median_words == 1.0
    assert st.lowercase_start == 0.75  # hey, lol, ok
    assert st.no_end_punct == 0.5  # "lol .. wait", "ok"
    assert st.emoji == 0.25 and st.exclaim_question == 0.25 and st.multi_message == 0.25
    assert vm.share(texts, "emoji") == 0.25
    with pytest.raises(MetricError, match="one of"):
        vm.share(texts, "shouting")
    assert _numbers_only(st.to_dict())


# --- topics --------------------------------------------------------------------------
def test_words():
    assert vm.words("Dog's toys, I'm 3 dogs! Rock\u2019n roll") == ["dog", "toys", "i'm", "dogs", "rock'n", "roll"]


def test_log_odds_matches_the_monroe_formula():
    bg = vm.Background({"x": 10, "y": 90}, total=100)
    z = vm.log_odds({"x": 3, "y": 1, "new": 2}, bg, alpha0=10.0)

    def ref(y_i, n_i, y_j, n_j, a0):
        a = a0 * y_j / n_j
        d = math.log((y_i + a) / (n_i + a0 - y_i - a)) - math.log((y_j + a) / (n_j + a0 - y_j - a))
        return d / math.sqrt(1 / (y_i + a) + 1 / (y_j + a))

    assert z["x"] == pytest.approx(ref(3, 6, 10, 100, 10.0))
    assert z["y"] == pytest.approx(ref(1, 6, 90, 100, 10.0))
    assert z["new"] == pytest.approx(ref(2, 6, 1, 100, 10.0))  # unseen in the table: counted as seen once
    assert z["x"] > 0 > z["y"]  # x: 50% of the target vs 10% of the background
    with pytest.raises(MetricError):
        vm.log_odds({}, bg)


def test_distinctive_words_ranks_over_used_content_words():
    bg = vm.Background({"the": 5000, "music": 8000, "dog": 20, "walk": 400, "today": 600}, total=20000)
    texts = (["the guitar is the best", "my guitar again music", "new guitar strings music", "guitar guitar"]
             + ["the dog", "walk the dog", "my dog sleeps"]
             + ["banana banana banana"]  # one reply repeating a word is no topic
             + ["zebra"]  # too rare
             + ["the the the music today walk"])
    top = vm.distinctive_words(texts, bg, top=2)
    assert top == ["guitar", "dog"]
    everything = vm.distinctive_words(texts, bg, top=30)
    assert "the" not in everything and "banana" not in everything and "zebra" not in everything
    assert "music" not in everything  # 3 of 33 words: used less than the background's 40%
    assert vm.distinctive_words([], bg) == []


def test_topic_share():
    texts = ["I love my guitar", "ok", "Dogs"]
    assert vm.topic_share(texts, ["guitar", "dog"]) == pytest.approx(1 / 3)  # "dogs" is not "dog"
    assert vm.topic_share(texts, ["guitar", "dogs"]) == pytest.approx(2 / 3)
    assert vm.topic_share(texts, []) == 0.0
    assert vm.topic_share(["GUITAR!"], ["guitar"]) == 1.0  # words are matched case-folded


# --- attribution ---------------------------------------------------------------------
SHOUT = ["HELLO THERE FRIEND!!!", "WHAT A DAY!!!", "NO WAY!!!", "I AM SO HAPPY!!!", "CALL ME LATER!!!",
         "THAT IS AMAZING!!!", "YES YES YES!!!", "GOOD NIGHT!!!"]
QUIET = ["hello there friend", "what a day", "no way", "i am so happy", "call me later", "that is amazing",
         "yes yes yes", "good night"]
DOTS = ["hello... there...", "what... a day...", "no... way...", "i am... so happy...", "call me... later...",
        "that is... amazing...", "yes... yes...", "good... night..."]


def test_attributor_names_the_author():
    model = vm.Attributor({"shout": SHOUT, "quiet": QUIET, "dots": DOTS})
    assert model.k == 3
    assert model.predict(["WELL THAT IS FUN!!!", "well that is fun", "well... that is fun..."]) == ["shout", "quiet", "dots"]
    assert model.accuracy(["SEE YOU!!!", "OK THEN!!!"], "shout") == 1.0
    assert model.accuracy(["see you", "ok then"], "shout") == 0.0
    with pytest.raises(MetricError, match="2 speakers"):
        vm.Attributor({"shout": SHOUT, "empty": []})


def test_assign_folds():
    assert vm.assign_folds([5, 5, 7, 9, 7]) == [0, 0, 1, 0, 1]
    assert vm.assign_folds(["c", "c", "c", "c"]) == [0, 0, 1, 1]  # one conversation: by position
    assert vm.assign_folds([1, 2, 3], folds=3) == [0, 1, 2]
    with pytest.raises(MetricError):
        vm.assign_folds([1, 2], folds=1)


def test_crossfit_attribution_known_answers_and_no_scored_text_in_training(monkeypatch):
    seen_train, seen_scored = [], []

    class Spy(vm.Attributor):
        def __init__(self, train, **kw):
            seen_train.append({t for texts in train.values() for t in texts})
            super().__init__(train, **kw)

        def predict(self, texts):
            seen_scored.append(set(texts))
            return super().predict(texts)

    monkeypatch.setattr(vm, "Attributor", Spy)
    real = SHOUT
    folds = vm.assign_folds([i // 2 for i in range(len(real))])  # 4 conversations of 2 replies
    gen = {"persona": ["SO MUCH FUN!!!", "SEE YOU SOON!!!", "WOW!!!", "LOVE IT!!!"],
           "backbone": ["so much fun", "see you soon", "wow", "love it"]}
    gen_folds = {s: [0, 1, 0, 1] for s in gen}
    res = vm.crossfit_attribution(real, folds, gen, gen_folds, {"quiet": QUIET, "dots": DOTS})
    assert res.k == 3 and res.chance == pytest.approx(1 / 3)
    assert res.accuracy == {"real": 1.0, "persona": 1.0, "backbone": 0.0}
    assert res.replies == {"real": 8, "persona": 4, "backbone": 4}
    assert len(seen_train) == 2  # one classifier per fold
    scored_per_fold = [set().union(*seen_scored[i * 3:(i + 1) * 3]) for i in range(2)]
    for train, scored in zip(seen_train, scored_per_fold):
        assert not train & scored  # nothing scored was trained on
    assert _numbers_only(res.to_dict())
    with pytest.raises(MetricError, match="distractor"):
        vm.crossfit_attribution(real, folds, {}, {}, {})


# --- the comparison record ---------------------------------------------------------
def test_compare_to_dict_holds_numbers_only():
    real = ["hey lol", "ok", "guitar time", "nah"]
    gen = {"persona": ["hey there guitar", "ok"], "backbone": ["Hello! I would be happy to help with that."]}
    attribution = vm.AttributionResult(20, {"real": 0.5, "persona": 0.25}, {"real": 4, "persona": 2})
    cmp = vm.compare(real, gen, ["guitar", "zebracanary"], attribution)
    d = cmp.to_dict()
    assert _numbers_only(d)
    text = json.dumps(d)
    assert "guitar" not in text and "zebracanary" not in text and "hey" not in text
    assert d["real"]["median_words"] == 1.5 and d["generated"]["backbone"]["median_words"] == 9
    assert d["length_ratio"]["backbone"] == 6.0 and d["length_ratio"]["persona"] == pytest.approx(2 / 1.5)
    assert d["topic_share"] == {"real": 0.25, "persona": 0.5, "backbone": 0.0} and d["topic_words"] == 2
    assert d["attribution"]["k"] == 20 and d["attribution"]["chance"] == 0.05
    lines = "\n".join(cmp.summary_lines())
    assert "attributed to you (K=20)" in lines and "uses your topics (2 words)" in lines
    assert "guitar" not in lines
    bare = vm.compare(real, gen).to_dict()
    assert bare["topic_share"] is None and bare["attribution"] is None
    with pytest.raises(MetricError):
        vm.compare([], gen)


def test_speakers_voice_for_the_benchmark_table():
    bg = vm.Background({"the": 100, "day": 10}, total=1000)
    spk = {
        "shout": vm.SpeakerTexts(SHOUT, ["REAL TALK!!!", "GO GO GO!!!"],
                                 {"persona": ["DO IT NOW!!!", "YES!!!"], "backbone": ["I would be glad to help you today."] * 2}),
        "quiet": vm.SpeakerTexts(QUIET, ["real talk", "go go"],
                                 {"persona": ["do it now", "yes"], "backbone": ["I would be glad to help you today."] * 2}),
        "dots": vm.SpeakerTexts(DOTS, ["real... talk...", "go... go..."],
                                {"persona": ["do... it now...", "yes..."], "backbone": ["I would be glad to help you today."] * 2}),
    }
    out = vm.speakers_voice(spk, background=bg)
    assert _numbers_only(out)
    agg = out["aggregate"]
    assert agg["k"] == 3 and agg["chance"] == pytest.approx(1 / 3)
    s = agg["settings"]
    assert s["real"]["attribution_macro"] == 1.0 and s["persona"]["attribution_macro"] == 1.0
    assert s["backbone"]["attribution_macro"] == pytest.approx(1 / 3)  # every copy goes to one speaker
    assert s["persona"]["length_within_tolerance"] == 1.0 and s["backbone"]["length_within_tolerance"] == 0.0
    assert s["persona"]["lowercase_within_tolerance"] == 1.0  # same casing habit as each speaker
    assert s["backbone"]["lowercase_within_tolerance"] == pytest.approx(1 / 3)  # only SHOUT never starts lowercase
    per = out["per_speaker"]["quiet"]
    assert per["persona"]["length_ratio"] == pytest.approx(2.0 / 2.0) and per["backbone"]["length_ratio"] == 4.0  # 8 words vs 2
    assert per["real"]["attribution"] == 1.0


# --- training fingerprint ----------------------------------------------------------
PAIRS = [(f"question {i}?", f"answer number {i}") for i in range(40)]


def test_digests_count_overlap_exactly_and_normalise():
    d = vm.TrainingDigests.of(PAIRS)
    assert d.total == 40 and d.cut is None and len(d.key) == 16
    held = PAIRS[:5] + [("QUESTION 7?", "  Answer   number 7 "), ("question 8?", "another answer"), ("other", "answer number 9")]
    o = d.overlap(held)
    assert (o.replies, o.matched, o.exact, o.estimated) == (8, 6, True, 6.0)
    assert d.overlap([("x", "y")]).matched == 0
    other_key = vm.TrainingDigests.of(PAIRS)  # another profile: another salt, other digests
    assert not (d.digests & other_key.digests)
    back = vm.TrainingDigests.from_meta(json.loads(json.dumps(d.to_meta())))
    assert back == d
    with pytest.raises(MetricError, match="malformed"):
        vm.TrainingDigests.from_meta({"key": "00", "digests": "abc", "total": 1})


def test_digests_above_the_cap_keep_a_bottom_k_sample_and_estimate():
    pairs = [(f"q{i}", f"a{i}") for i in range(400)]
    d = vm.TrainingDigests.of(pairs, max_digests=50)
    assert len(d.digests) == 50 and d.total == 400 and d.cut is not None
    o = d.overlap(pairs)
    assert not o.exact and 0 < o.checkable < 400 and o.matched == o.checkable and o.estimated == 400.0
    assert d.overlap([(f"x{i}", f"y{i}") for i in range(100)]).estimated == 0.0


def _ex(prev, reply, conv=0):
    return Example((Turn("user", prev),), reply, conv)


def test_enrollment_meta_fits_the_prefix_header_and_roundtrips():
    train = [_ex(f"how is the guitar {i}?", f"my guitar {i} rocks, the dog too") for i in range(9000)]
    val = [_ex("and the val?", "val reply")]
    meta = vm.enrollment_meta(train, val, background=vm.Background({"the": 10}, 100))
    v = meta[vm.META_KEY]
    assert v["topic_words"] == ["dog", "guitar", "rocks"]  # equal counts, all unseen in the background: a-z
    prefix = Prefix(np.zeros((1, 2, 1, 1, 4), np.float32), "f" * 64, meta=meta)
    back = Prefix.from_bytes(prefix.to_bytes())  # the header bound holds even for 9,000 replies
    assert vm.profile_topic_words(back.meta) == v["topic_words"]
    digests = vm.profile_digests(back.meta)
    assert digests.total == 9001 and len(digests.digests) == vm.MAX_DIGESTS
    assert digests.overlap([vm.example_pair(e) for e in train[:200]]).estimated == 200.0
    assert vm.profile_digests({}) is None and vm.profile_topic_words({"source": "none"}) is None
    assert vm.REPLY_TOKENS_KEY not in v and vm.profile_reply_tokens(back.meta) is None  # no token counter given


def test_enrollment_meta_keeps_the_median_reply_length_in_tokens():
    train = [_ex("hi?", " ".join(["w"] * n)) for n in (1, 2, 3, 10, 40)]
    meta = vm.enrollment_meta(train, background=vm.Background({"the": 10}, 100), count_tokens=lambda t: 2 * len(t.split()))
    assert meta[vm.META_KEY][vm.REPLY_TOKENS_KEY] == 6  # median words 3, two tokens each
    back = Prefix.from_bytes(Prefix(np.zeros((1, 2, 1, 1, 4), np.float32), "f" * 64, meta=meta).to_bytes())
    assert vm.profile_reply_tokens(back.meta) == 6
    assert vm.median_reply_tokens(["a", "a b"], lambda t: 0) == 1  # at least one token
    with pytest.raises(MetricError):
        vm.median_reply_tokens([], len)
    for bad in ({"voice": {"reply_tokens": 0}}, {"voice": {"reply_tokens": "12"}}, {"voice": {"reply_tokens": True}},
                {"voice": []}, None):
        assert vm.profile_reply_tokens(bad) is None


# --- the background table ------------------------------------------------------------
def test_shipped_background_table_matches_its_hash():
    bg = vm.load_background()
    info = json.loads((vm.BACKGROUND_DIR / vm.BACKGROUND_INFO).read_text())
    assert bg.total == info["totals"]["tokens"] and len(bg.counts) == info["totals"]["kept_words"]
    assert bg.counts["the"] > 10000 and min(bg.counts.values()) >= info["totals"]["min_count"]
    assert (vm.BACKGROUND_DIR / vm.BACKGROUND_FILE).stat().st_size < 300_000
    assert info["command"].startswith("python benchmarks/build_background.py")


def test_background_build_write_load_and_tamper(tmp_path):
    counts, totals = vm.build_background(["the dog, the dog", "The cat"], min_count=2)
    assert counts == {"the": 3, "dog": 2} and totals["tokens"] == 6 and totals["distinct_words"] == 3
    vm.write_background(counts, tmp_path, {"totals": totals})
    assert (tmp_path / vm.BACKGROUND_FILE).read_text() == "the\t3\ndog\t2\n"
    bg = vm.load_background(tmp_path)
    assert dict(bg.counts) == counts and bg.total == 6 and bg.count("cat") == 1.0
    (tmp_path / vm.BACKGROUND_FILE).write_text("the\t3\ndog\t9\n")
    vm._BACKGROUND_CACHE.clear()
    with pytest.raises(MetricError, match="sha256"):
        vm.load_background(tmp_path)
    with pytest.raises(MetricError, match="missing"):
        vm.load_background(tmp_path / "nowhere")


def test_build_background_script_on_a_hand_made_corpus(tmp_path):
    """benchmarks/build_background.py end to end on a tiny chitchat-format corpus (smoke test)."""
    module = load_benchmark("build_background")
    data = {}
    for n in range(6):  # one conversation per pair of speakers: everyone lands in part A
        a, b = f"s{n}", f"t{n}"
        data[f"conv-{n}"] = {"messages": [
            [{"text": "hey, how is the guitar going", "timestamp": "2020-01-01T00:00:00Z", "sender": a}],
            [{"text": f"my guitar is great {n}", "timestamp": "2020-01-01T00:00:01Z", "sender": b}],
            [{"text": "nice, guitar guitar", "timestamp": "2020-01-01T00:00:02Z", "sender": a}],
        ]}
    corpus = tmp_path / "dataset.json"
    corpus.write_text(json.dumps(data))
    out = tmp_path / "bg"
    info = module.main(["--corpus", str(corpus), "--out", str(out), "--min-count", "2"])
    assert info["totals"]["replies"] == 12  # two replies per conversation
    bg = vm.load_background(out)
    assert dict(bg.counts) == {"guitar": 18, "my": 6, "is": 6, "great": 6, "nice": 6}
    recorded = json.loads((out / vm.BACKGROUND_INFO).read_text())
    assert recorded["data"]["split"]["part"] == "A" and len(recorded["data"]["corpus_file_sha256"]) == 64
    assert "--min-count 2" in recorded["command"]
    assert b"how is the" not in (out / vm.BACKGROUND_FILE).read_bytes()  # counts only, no sentences


def test_runtime_side_stays_torch_free(tiny_onnx):
    """voice imports numpy only; eval with the voice comparison, attribution and chitchat distractors
    runs on onnxruntime + numpy + scikit-learn: no torch, no transformers."""
    import subprocess

    code = (
        "import sys, json\n"
        "import persona_sdk.voice, persona_sdk.evaluate\n"
        "light = not any(m in sys.modules for m in ('sklearn', 'torch', 'transformers'))\n"
        "from persona_sdk.chats import load_chats\n"
        "from persona_sdk.config import GenerationConfig\n"
        "from persona_sdk.evaluate import EvalConfig, evaluate, held_out_examples, source_speakers\n"
        "from persona_sdk.prefix import Prefix\n"
        "from persona_sdk.runtime import Engine\n"
        "import numpy as np\n"
        f"engine = Engine({str(tiny_onnx)!r})\n"
        "kv = np.zeros((engine.layers, 2, engine.kv_heads, 2, engine.head_dim), np.float32)\n"
        "convs = [{'id': f'c{i}', 'messages': [{'sender': 'B', 'text': f'hi {i}?'}, {'sender': 'A', 'text': f'yo {i}'}]}"
        " for i in range(4)]\n"
        f"path = {str(tiny_onnx.parent / 'voice-chats.json')!r}\n"
        "open(path, 'w').write(json.dumps({'me': 'A', 'conversations': convs}))\n"
        "cfg = EvalConfig(voice=2, samples=0, generation=GenerationConfig(max_new_tokens=3))\n"
        "ex = held_out_examples(engine, load_chats(path), 'A', cfg)\n"
        "r = evaluate(engine, Prefix(kv, engine.fingerprint), ex, config=cfg, distractors=source_speakers(2, 10))\n"
        "assert r.voice.attribution.k == 3\n"
        "print(json.dumps({'light': light, 'heavy': [m for m in ('torch', 'transformers') if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"light": True, "heavy": []}
