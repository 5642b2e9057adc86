"""The ONNX decode loop: prefix injection, decoding strategies, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from persona_sdk.config import GenerationConfig, RuntimeConfig
from persona_sdk.conversation import ASSISTANT, USER, Turn
from persona_sdk.errors import (BackboneMismatchError, ConfigError, DeviceError, ModelFileError,
                                PrefixShapeError)
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine, choose_providers

GREEDY = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    return Engine(tiny_onnx)


def _prefix(engine, length=5, seed=0, fingerprint=None):
    rng = np.random.default_rng(seed)
    kv = rng.normal(size=(engine.layers, 2, engine.kv_heads, length, engine.head_dim)).astype(np.float32)
    return Prefix(kv, fingerprint or engine.fingerprint, method="test")


def _prompt(engine, text="hi there, how are you doing today?"):
    return engine.format.prompt_ids([Turn(USER, text)], 200)


def test_greedy_with_prefix_matches_torch_reference(engine, tiny_backbone):
    """Prefix as initial past, mask with P leading ones, positions from P: same tokens as torch."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    engine_stop = engine.stop_ids
    engine.stop_ids = set()  # compare a full 24 steps
    try:
        prefix = _prefix(engine)
        ids = _prompt(engine)
        ours = list(engine.generate_ids(ids, prefix, GREEDY))
    finally:
        engine.stop_ids = engine_stop
    model = AutoModelForCausalLM.from_pretrained(str(tiny_backbone)).eval()
    cache = DynamicCache()
    for layer in range(engine.layers):
        cache.update(torch.tensor(prefix.kv[layer, 0][None]), torch.tensor(prefix.kv[layer, 1][None]), layer)
    p, seq, x = prefix.length, list(ids), torch.tensor([ids])
    ref: list[int] = []
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=torch.ones(1, p + len(seq), dtype=torch.long),
                    position_ids=torch.arange(p, p + len(seq))[None], past_key_values=cache)
        ort_logits = engine.forward(np.asarray([ids]), *engine.initial_past(prefix)).logits[0]
        np.testing.assert_allclose(ort_logits, out.logits[0, -1].numpy(), atol=1e-4)
        for _ in range(GREEDY.max_new_tokens):
            tok = int(out.logits[0, -1].argmax())
            ref.append(tok)
            seq.append(tok)
            out = model(input_ids=torch.tensor([[tok]]), attention_mask=torch.ones(1, p + len(seq), dtype=torch.long),
                        position_ids=torch.tensor([[p + len(seq) - 1]]), past_key_values=out.past_key_values)
    assert ours == ref


def test_prefix_changes_the_output(engine):
    ids = _prompt(engine)
    with_prefix = engine.forward(np.asarray([ids]), *engine.initial_past(_prefix(engine))).logits
    without = engine.forward(np.asarray([ids]), *engine.initial_past(None)).logits
    assert not np.allclose(with_prefix, without, atol=1e-3)


def test_sampling_with_a_seed_is_reproducible(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    gen = GenerationConfig(seed=7, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=20)
    a = list(engine.generate_ids(ids, prefix, gen))
    b = list(engine.generate_ids(ids, prefix, gen))
    c = list(engine.generate_ids(ids, prefix, gen.replace(seed=8)))
    assert a == b and len(a) > 0
    assert a != c


def test_top_k_1_is_greedy(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    sampled = list(engine.generate_ids(ids, prefix, GREEDY.replace(do_sample=True, temperature=1.0, top_k=1, seed=3)))
    assert sampled == list(engine.generate_ids(ids, prefix, GREEDY))


def test_beam_of_one_is_greedy(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    assert list(engine.generate_ids(ids, prefix, GREEDY.replace(num_beams=1))) == list(
        engine.beam_search(ids, prefix, GREEDY.replace(num_beams=1)))


def test_beam_search_returns_the_best_beam(engine):
    """With beams >= vocab over two steps the search is exhaustive: compare with brute force."""
    ids, prefix = _prompt(engine), _prefix(engine)
    v = engine.vocab_size
    saved, engine.stop_ids = engine.stop_ids, set()
    try:
        best = list(engine.beam_search(ids, prefix, GREEDY.replace(num_beams=v, max_new_tokens=2, length_penalty=0.0)))
    finally:
        engine.stop_ids = saved
    first = engine.forward(np.asarray([ids]), *engine.initial_past(prefix))
    lp1 = first.logits[0] - np.logaddexp.reduce(first.logits[0])  # (V,)
    past_np = [p.numpy() for p in first.past]
    import onnxruntime as ort
    past = [ort.OrtValue.ortvalue_from_numpy(np.repeat(p, v, axis=0)) for p in past_np]
    second = engine.forward(np.arange(v)[:, None], past, first.past_len)
    lp2 = second.logits - np.logaddexp.reduce(second.logits, axis=1, keepdims=True)  # (V, V)
    total = lp1[:, None] + lp2
    t1, t2 = np.unravel_index(np.argmax(total), total.shape)
    assert best == [int(t1), int(t2)]


def test_stop_strings_end_the_reply(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    full = "".join(engine.stream_text(ids, prefix, GREEDY))
    assert len(full) > 6
    stop = full[3:5]
    cut = "".join(engine.stream_text(ids, prefix, GREEDY.replace(stop=(stop,))))
    assert cut == full[: full.index(stop)]


def test_streaming_pieces_join_to_the_text(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    pieces = list(engine.stream_text(ids, prefix, GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.format.decode(list(engine.generate_ids(ids, prefix, GREEDY)))


def test_token_losses_match_the_forward_pass(engine):
    ids, prefix = _prompt(engine), _prefix(engine)
    reply = engine.format.reply_ids("i am fine thanks")
    losses = engine.token_losses(ids + reply, len(ids), prefix)
    assert losses.shape == (len(reply),) and np.all(losses > 0)
    out = engine.forward(np.asarray([ids]), *engine.initial_past(prefix)).logits[0]
    assert losses[0] == pytest.approx(-(out[reply[0]] - np.logaddexp.reduce(out)), rel=1e-4)


def test_context_budget_drops_oldest_turns_but_keeps_the_prefix(engine):
    history = [Turn(USER if i % 2 == 0 else ASSISTANT, "the quick brown fox jumps over the lazy dog")
               for i in range(40)] + [Turn(USER, "hi there")]
    gen = GREEDY.replace(context_budget=64, max_new_tokens=5)
    prefix = _prefix(engine, length=8)
    ids = engine.prompt_ids(history, prefix, gen)
    assert len(ids) <= 64
    assert ids[-len(engine.format.header_ids):] == engine.format.header_ids
    assert len(list(engine.generate_ids(ids, prefix, gen))) <= 5  # and the prefix still goes in


def test_prefix_of_the_wrong_shape_is_refused(engine):
    bad = Prefix(np.zeros((engine.layers + 1, 2, engine.kv_heads, 4, engine.head_dim), np.float32), engine.fingerprint)
    with pytest.raises(PrefixShapeError, match="does not match the backbone"):
        engine.initial_past(bad)


def test_prefix_for_another_backbone_is_refused(engine):
    with pytest.raises(BackboneMismatchError, match="different|made for backbone"):
        engine.initial_past(_prefix(engine, fingerprint="f" * 64))


def test_missing_and_corrupt_exports_give_clear_errors(tiny_onnx, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(tiny_onnx, broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(ModelFileError, match="manifest.json"):
        Engine(broken)
    shutil.copy(tiny_onnx / "manifest.json", broken / "manifest.json")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt|JSON"):
        Engine(broken)
    shutil.copy(tiny_onnx / "manifest.json", broken / "manifest.json")
    size = (broken / "model.onnx").stat().st_size
    (broken / "model.onnx").write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(ModelFileError, match="model.onnx"):
        Engine(broken)
    (broken / "model.onnx").write_bytes(b"short")
    with pytest.raises(ModelFileError, match="model.onnx"):
        Engine(broken)


def test_provider_selection(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="CUDA was requested"):
        choose_providers("cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert choose_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda")[0] == "CUDAExecutionProvider"
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


def test_bad_settings_name_the_allowed_values():
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        RuntimeConfig(device="tpu")
    with pytest.raises(ConfigError, match="True or False"):
        RuntimeConfig(spin="yes")
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ConfigError, match="allowed"):
        GenerationConfig().replace(temprature=1.0)


def test_the_chat_path_needs_neither_torch_nor_the_exporters(tiny_backbone, tiny_exported_home, tiny_onnx):
    """Opening engines and replying, with torch, transformers, optimum, peft, onnx and
    persona_sdk.exporters unimportable (a chat-only install): nothing on the way imports them."""
    from no_export_extras import run_without_export_extras

    code = (
        "import json, sys\n"
        "import persona_sdk, persona_sdk.cli\n"
        "from persona_sdk import PersonaAgent\n"
        f"cached = PersonaAgent(backbone={str(tiny_backbone)!r}, variant='fp32')  # found in the cache\n"
        "r1 = cached.reply('hi there', max_new_tokens=5, seed=1)\n"
        f"folder = PersonaAgent(backbone={str(tiny_onnx)!r})  # an export folder\n"
        "r2 = ''.join(folder.stream('hi there', max_new_tokens=5, seed=1))\n"
        "engine = cached.engine\n"
        "losses = engine.token_losses(engine.format.encode('hi there'), 1)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum', 'peft', 'onnx')"
        " or m.startswith('persona_sdk.exporters'))\n"
        "print(json.dumps({'replies': [type(r1).__name__, type(r2).__name__], 'export': str(engine.export_dir),"
        " 'losses': len(losses), 'heavy': heavy}))\n"
    )
    out = run_without_export_extras(code)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replies"] == ["str", "str"] and result["losses"] > 0
    assert result["export"].startswith(str(tiny_exported_home))  # the cached export, not a fresh build
    assert result["heavy"] == []


def test_the_blocker_does_block():
    """The test above would pass vacuously if the finder let torch or the exporters through."""
    from no_export_extras import run_without_export_extras

    for module in ("torch", "persona_sdk.exporters", "persona_sdk.exporters.validation"):
        out = run_without_export_extras(f"import {module}")
        assert out.returncode == 1 and "blocked by the test" in out.stderr, module


def test_threads_spin_only_inside_a_run(tiny_onnx, engine):
    """Spinning is on by default, and always stopped when a run returns (no idle burn)."""
    from persona_sdk.runtime import Engine

    def entry(e, key):
        return e.session.get_session_options().get_session_config_entry(key)

    assert entry(engine, "session.intra_op.allow_spinning") == "1"
    assert entry(engine, "session.force_spinning_stop") == "1"
    calm = Engine(tiny_onnx, RuntimeConfig(spin=False))
    assert entry(calm, "session.intra_op.allow_spinning") == "0"
    assert entry(calm, "session.force_spinning_stop") == "1"
    ids = [1, 5, 6, 7]
    np.testing.assert_allclose(calm.token_losses(ids, 1), engine.token_losses(ids, 1), rtol=1e-5, atol=1e-5)


def test_an_idle_engine_burns_no_cpu(tiny_onnx):
    """After a run returns, the spinning workers stop: the process uses ~no CPU while idle."""
    import time

    from persona_sdk.runtime import Engine

    spun = Engine(tiny_onnx, RuntimeConfig(spin=True, threads=2))
    for _ in range(5):
        spun.token_losses([1, 5, 6, 7, 8, 9], 1)
    before = time.process_time()
    time.sleep(0.3)
    # measured here: ~0.0001 s; without session.force_spinning_stop the workers spin on for ~0.03 s
    assert time.process_time() - before < 0.01


# --- the KV cache: shared in place, reused across turns ------------------------------
def test_the_fused_graph_decodes_in_place_in_one_preallocated_buffer(engine):
    """past and present are one buffer: a step writes the new position into it, nothing is reallocated."""
    from persona_sdk.kvcache import SharedKVCache

    prefix = _prefix(engine, length=3)
    state = engine.new_state(prefix, capacity=64)
    assert engine.shares_kv and isinstance(state.cache, SharedKVCache)
    ids = _prompt(engine)
    arrays = list(state.cache.arrays)
    state.start(ids)
    np.testing.assert_array_equal(arrays[0][0, :, :3], prefix.kv[0, 0])  # the persona block, then the prompt
    assert state.cache.lengths[0] == 3 + len(ids)
    assert not arrays[0][0, :, 3 + len(ids)].any()
    state.feed(5)
    assert arrays[0][0, :, 3 + len(ids)].any()  # written in place by the attention kernel
    assert all(a is b for a, b in zip(arrays, state.cache.arrays))


def test_the_cache_grows_past_its_first_capacity(engine):
    ids = _prompt(engine)
    state = engine.new_state(_prefix(engine), capacity=8)
    saved, engine.stop_ids = engine.stop_ids, set()
    try:
        grown = list(engine.generate_ids(ids, _prefix(engine), GREEDY.replace(max_new_tokens=150), state=state))
        fresh = list(engine.generate_ids(ids, _prefix(engine), GREEDY.replace(max_new_tokens=150)))
    finally:
        engine.stop_ids = saved
    assert state.cache.capacity >= 5 + len(ids) + 149 and grown == fresh


def test_a_conversation_feeds_only_its_new_turn_and_decodes_as_if_fed_whole(engine):
    prefix = _prefix(engine)
    state = engine.new_state(prefix)
    history = [Turn(USER, "hi there, how are you doing today?")]
    first = list(engine.generate_ids(engine.prompt_ids(history, prefix, GREEDY), prefix, GREEDY, state=state))
    history += [Turn(ASSISTANT, engine.format.decode(first).strip()), Turn(USER, "what do you do on weekends?")]
    ids = engine.prompt_ids(history, prefix, GREEDY)
    second = list(engine.generate_ids(ids, prefix, GREEDY, state=state))
    assert state.reused >= len(engine.prompt_ids(history[:1], prefix, GREEDY))  # the whole first prompt at least
    assert second == list(engine.generate_ids(ids, prefix, GREEDY))  # = a fresh cache fed everything
    # an edited earlier turn: the cache is kept only up to the edit
    history[0] = Turn(USER, "hi there, how is it going?")
    ids = engine.prompt_ids(history, prefix, GREEDY)
    third = list(engine.generate_ids(ids, prefix, GREEDY, state=state))
    assert state.reused < len(engine.format.encode("<|im_start|>user\nhi there, how is"))
    assert third == list(engine.generate_ids(ids, prefix, GREEDY))


def test_the_same_prompt_again_still_feeds_its_last_token(engine):
    prefix = _prefix(engine)
    state = engine.new_state(prefix)
    ids = _prompt(engine)
    a = list(engine.generate_ids(ids, prefix, GREEDY, state=state))
    b = list(engine.generate_ids(ids, prefix, GREEDY, state=state))
    assert a == b and state.reused == len(ids) - 1


def test_sampling_picks_among_the_top_k_only():
    from persona_sdk.sampling import Sampler, top_k_indices

    rng = np.random.default_rng(0)
    logits = rng.normal(size=49152).astype(np.float32)
    for k in (1, 5, 50, 700):
        got = np.sort(top_k_indices(logits, k))
        np.testing.assert_array_equal(got, np.sort(np.argsort(-logits)[:k]))
    sampler = Sampler(GenerationConfig(seed=1, top_k=3, top_p=1.0, temperature=5.0), logits.size)
    picks = {sampler.pick(logits) for _ in range(200)}
    assert picks == set(np.argsort(-logits)[:3].tolist())
    nucleus = Sampler(GenerationConfig(seed=1, top_k=0, top_p=1e-6), logits.size)
    assert {nucleus.pick(logits) for _ in range(20)} == {int(np.argmax(logits))}


def test_the_repetition_penalty_applies_to_seen_tokens_only():
    from persona_sdk.sampling import Sampler

    logits = np.array([2.0, 1.9, -1.0, -1.1], dtype=np.float32)
    greedy = GenerationConfig(do_sample=False, repetition_penalty=2.0)
    assert Sampler(greedy, 4).pick(logits) == 0
    assert Sampler(greedy, 4, context_ids=[0]).pick(logits) == 1  # 2.0 / 2 < 1.9
    sampler = Sampler(greedy, 4, context_ids=[0, 1])
    assert sampler.pick(logits) == 0  # 1.0 > 0.95
    sampler.observe(3)
    assert sampler.pick(logits) == 0 and logits[0] == 2.0  # the caller's logits are untouched


def test_end_of_turn_tokens_are_exempt_from_the_penalty_only_under_the_length_pull():
    from persona_sdk.sampling import Sampler

    logits = np.array([2.0, 1.9, -1.0, -1.1], dtype=np.float32)  # token 0 ends the turn
    greedy = GenerationConfig(do_sample=False, repetition_penalty=2.0)
    # no pull: ending is penalised like any token already in the conversation (as in transformers)
    assert Sampler(greedy, 4, context_ids=[0], stop_ids={0}, target_tokens=5).pick(logits) == 1
    pulled = greedy.replace(length_pull=1.0)
    sampler = Sampler(pulled, 4, context_ids=[0, 1], stop_ids={0}, target_tokens=1)
    sampler.observe(3)  # one reply token: at the target, the pull adds nothing
    assert sampler.stop_bias() == 0.0 and sampler.pick(logits) == 0  # 2.0 unpenalised > 1.9 / 2
    sampler.observe(0)
    assert sampler.generated == 2 and 0 not in sampler._seen_ids and 3 in sampler._seen_ids


def test_the_length_pull_moves_only_the_stop_logits_toward_the_target():
    import math

    from persona_sdk.sampling import Sampler, length_target

    gen = GenerationConfig(do_sample=False, repetition_penalty=1.0, length_pull=2.0)
    logits = np.array([0.0, 0.5, -3.0], dtype=np.float32)  # 0 = end of turn, 1 = a word
    sampler = Sampler(gen, 3, stop_ids={0}, target_tokens=3)
    picks = []
    for _ in range(8):
        assert sampler.stop_bias() == pytest.approx(2.0 * math.log((sampler.generated + 1) / 4))
        picks.append(sampler.pick(logits))
        if picks[-1] == 0:
            break
        sampler.observe(picks[-1])
    # bias -2.77, -1.39, -0.58, 0, +0.45 (all < 0.5), then +0.81 > 0.5: ends after 5 words
    assert picks == [1, 1, 1, 1, 1, 0]
    assert logits.tolist() == [0.0, 0.5, -3.0]  # the caller's buffer is untouched
    off = Sampler(gen.replace(length_pull=0.0), 3, stop_ids={0}, target_tokens=3)
    assert off.target is None and off.stop_bias() == 0.0 and off.pick(logits) == 1
    # sampling: a short target ends replies sooner than a long one
    lengths = {}
    for target in (2, 30):
        runs = []
        for seed in range(40):
            s = Sampler(GenerationConfig(seed=seed, repetition_penalty=1.0, length_pull=4.0, top_k=0,
                                         temperature=1.0), 3, stop_ids={0}, target_tokens=target)
            n = 0
            while n < 200 and s.pick(np.array([-1.0, 0.0, -9.0], dtype=np.float32)) != 0:
                s.observe(1)
                n += 1
            runs.append(n)
        lengths[target] = float(np.median(runs))
    assert lengths[2] < 5 < 15 < lengths[30]

    class P:  # a persona whose profile keeps a length
        meta = {"voice": {"reply_tokens": 7}}

    # where the target comes from: the setting, else the persona's profile, else none
    assert length_target(gen, P()) == 7 and length_target(gen.replace(target_tokens=4), P()) == 4
    assert length_target(gen, None) is None and length_target(gen.replace(length_pull=0.0), P()) is None

    # in a conversation: the persona's own turns so far (tokens) alone (conversation, the default), with
    # the profile's length (blend: geometric mean) or the profile's only; none spoken yet: the profile's
    turns = [28, 2, 30]  # median 28
    assert gen.length_from == "conversation" and length_target(gen, P(), turns) == 28
    assert length_target(gen.replace(length_from="blend"), P(), turns) == 14  # sqrt(28 * 7)
    assert length_target(gen.replace(length_from="profile"), P(), turns) == 7
    assert length_target(gen, P(), []) == 7 and length_target(gen.replace(target_tokens=4), P(), turns) == 4
    assert length_target(gen, None, turns) is None  # the bare backbone is not pulled without target_tokens
    assert length_target(gen, P(), [0]) == 1  # at least one token


def test_the_engine_pulls_toward_the_persona_turns_of_the_conversation(engine):
    prefix = _prefix(engine)
    prefix.meta = {"voice": {"reply_tokens": 3}}
    say = [Turn(ASSISTANT, "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2)]
    chat = [Turn(USER, "hi"), *say, Turn(USER, "and then?")]
    ids = engine.format.prompt_ids(chat, 500)
    own = engine.format.own_turn_tokens(ids)[0]
    assert own > 12  # a long persona turn against a 3-token habit
    chat = GenerationConfig()  # the chat defaults pull toward the conversation's own turns
    assert chat.length_pull > 0 and engine.sampler(chat, ids, prefix).target == own
    assert engine.sampler(chat.replace(length_from="blend"), ids, prefix).target == round((own * 3) ** 0.5)
    assert engine.sampler(chat, _prompt(engine), prefix).target == 3  # nothing said yet: the profile's
    assert engine.sampler(chat.replace(length_pull=0.0), ids, prefix).target is None  # off
    assert engine.sampler(chat, ids, None).target is None  # the bare backbone is not pulled
    # and the pull does end replies: toward a 1-token habit, the long-turn conversation's replies are longer
    greedy = chat.replace(do_sample=False, max_new_tokens=40, length_from="profile")
    prefix.meta = {"voice": {"reply_tokens": 1}}
    short = len(list(engine.generate_ids(ids, prefix, greedy)))
    long_ = len(list(engine.generate_ids(ids, prefix, greedy.replace(length_from="conversation"))))
    assert short < long_


@pytest.mark.parametrize("bad", [{"length_pull": -1.0}, {"length_pull": 21}, {"length_pull": "2"},
                                 {"target_tokens": 0}, {"target_tokens": 2.5}, {"length_from": "median"}])
def test_length_settings_are_checked(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        GenerationConfig(**bad)
