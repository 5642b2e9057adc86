"""PAL: silver labels and training (persona_sdk.training.pal), select-then-generate at chat
time (persona_sdk.explicit.pal) with the *predicted* sentence only, the merged adapter's ONNX
export against torch+PEFT, and the shipped adapter."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from explicit_helpers import random_adapter, write_spc_csv
from persona_sdk.config import GenerationConfig, RuntimeConfig
from persona_sdk.conversation import USER, Turn
from persona_sdk.errors import AdapterError, ExportNotReadyError
from persona_sdk.explicit import formats
from persona_sdk.explicit.pal import PALMode, adapter_info
from persona_sdk.runtime import StepOutput

PERSONA = ("I bake cookies.", "I have a dog.", "I play the guitar.")


# --- silver labels ------------------------------------------------------------------------
def test_silver_label_is_the_sentence_sharing_most_content_words():
    from persona_sdk.training.pal import silver_label

    assert silver_label(PERSONA, "my dog is barking at the mailman") == 1
    assert silver_label(PERSONA, "I played guitar all night") == 2  # plural/verb suffixes stripped
    assert silver_label(PERSONA, "hi, how are you?") is None  # nothing shared
    assert silver_label(PERSONA, "my dog eats cookies") is None  # a tie: no label rather than a guess
    assert silver_label((), "anything") is None


# --- select, then generate: the prediction, never a gold label ------------------------------
class ScriptedEngine:
    """An engine stand-in whose next-token scores favour one answer (the sentence written out) (the 'model's choice')."""

    def __init__(self, fmt, favourite: int) -> None:
        self.format, self.favourite, self.max_positions = fmt, favourite, 512
        self.generated_from: list[list[int]] = []

    def initial_past(self, prefix):
        return [], 0

    def forward(self, ids, past, past_len, all_logits=False):
        vocab = self.format.tokenizer.get_vocab_size()
        logits = np.zeros((1, ids.shape[1], vocab), dtype=np.float32)
        # every token of the favourite's answer (the sentence written out); the others share only some
        favoured = self.format.reply_ids(formats.selection_answer(PERSONA[self.favourite]))
        logits[..., favoured] = 10.0
        return StepOutput(logits if all_logits else logits[:, -1], [], past_len + ids.shape[1])

    def stream_text(self, prompt_ids, prefix, gen, should_stop=None):
        self.generated_from.append(list(prompt_ids))
        yield "ok"


def test_selection_uses_the_predicted_sentence_and_nothing_else(tiny_onnx):
    from persona_sdk.runtime import Engine

    fmt = Engine(tiny_onnx).format
    history = [Turn(USER, "do you have pets?")]
    for favourite in range(len(PERSONA)):
        engine = ScriptedEngine(fmt, favourite)
        mode = PALMode(PERSONA, engine)
        assert int(np.argmax(mode.selection_scores(history))) == favourite
        assert "".join(mode.reply_stream(history, GenerationConfig(max_new_tokens=2))) == "ok"
        assert mode.last_selection == (favourite,)
        prompt = fmt.tokenizer.decode(engine.generated_from[-1], skip_special_tokens=False)
        assert prompt == fmt.tokenizer.decode(
            formats.persona_prompt_ids(fmt, [PERSONA[favourite]], history, 512), skip_special_tokens=False)
        assert all(s not in prompt for i, s in enumerate(PERSONA) if i != favourite)
    # no way in for a gold label: the steps take the conversation (and settings) only
    for step in (PALMode.prepare, PALMode.predict, PALMode.selection_scores, PALMode.reply_stream):
        assert list(inspect.signature(step).parameters) in (["self", "history", "gen"],
                                                            ["self", "history", "gen", "should_stop"])
    everything = PALMode(PERSONA, ScriptedEngine(fmt, 0), select=False).prepare(history)
    assert everything.conditioned_on == (0, 1, 2)


# --- training (tiny) --------------------------------------------------------------------------
def test_no_selection_answer_follows_the_bare_reply_header(tiny_onnx, tmp_path):
    """Stage 1 mixes two formats; the first token after the reply header is always a reply's, so a short
    run cannot learn to answer a chat message with a sentence number (the first shipped adapter did)."""
    from persona_sdk.runtime import Engine
    from persona_sdk.training.corpora import read_spc, spc_persona_examples
    from persona_sdk.training.pal import PALConfig, label_examples, stage1_data

    fmt = Engine(tiny_onnx).format
    items = label_examples(spc_persona_examples(read_spc(write_spc_csv(tmp_path / "spc.csv", conversations=6))))
    data = stage1_data(fmt, items, PALConfig(context_budget=400, reply_budget=8))
    cue, header = fmt.encode(formats.SELECTION_CUE), list(fmt.header_ids)
    selection, generation = data[0::2], data[1::2]
    assert items and len(selection) == len(generation) == len(items)
    for sel, it in zip(selection, items):
        assert list(sel.ids[sel.n_prompt - len(cue) - len(header): sel.n_prompt]) == header + cue
        assert fmt.decode(list(sel.ids[sel.n_prompt:])).strip() == it.example.persona[it.label].strip()
    for gen in generation:
        assert list(gen.ids[gen.n_prompt - len(header): gen.n_prompt]) == header


def test_stage1_loss_weighs_a_selection_answer_like_a_whole_reply(tiny_backbone):
    """Per-example averaging: a short selection answer counts as much as a long reply (the first PAL
    averaged per token: its one-number answers were ~1/20 of stage 1's gradient)."""
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.data import Encoded
    from persona_sdk.training.pal import stage1_dev_loss, stage1_loss

    bb = load_backbone(tiny_backbone)
    short = Encoded(tuple(range(5, 17)), 10, 0)  # 2 predicted tokens
    long = Encoded(tuple(range(20, 60)), 6, 0)  # 34 predicted tokens
    alone = [float(stage1_loss(bb, [e], "per-example")) for e in (short, long)]
    both = float(stage1_loss(bb, [short, long], "per-example"))
    assert both == pytest.approx(sum(alone) / 2, rel=1e-5)
    per_token = float(stage1_loss(bb, [short, long], "per-token"))
    assert per_token == pytest.approx((2 * alone[0] + 34 * alone[1]) / 36, rel=1e-5)
    assert abs(both - per_token) > 1e-4  # the two weightings really differ here
    assert stage1_dev_loss(bb, [short, long, long], "per-example", 2) == pytest.approx(
        (alone[0] + 2 * alone[1]) / 3, rel=1e-5)


def test_adapter_of_an_older_prompt_layout_is_refused(tiny_adapter, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_adapter, old)
    info = json.loads((old / "PAL.json").read_text())
    del info["format"]  # adapters from before the selection cue
    (old / "PAL.json").write_text(json.dumps(info))
    with pytest.raises(AdapterError, match="older prompt layout"):
        adapter_info(old)


def test_train_pal_runs_both_stages_in_the_loop(tiny_backbone, tmp_path):
    from persona_sdk.training.corpora import read_spc, spc_persona_examples
    from persona_sdk.training.pal import PALConfig, save_pal, train_pal

    examples = spc_persona_examples(read_spc(write_spc_csv(tmp_path / "spc.csv", conversations=24)))
    train, dev = examples[: len(examples) * 3 // 4], examples[len(examples) * 3 // 4:]
    phases, notes = [], []
    cfg = PALConfig(stage1_replies=8, dpo_pairs=4, dev_replies=4, dev_pairs=2, batch_size=4, dpo_batch=2, rank=2,
                    context_budget=400, reply_budget=6, lr=1e-2, dpo_lr=1e-2)
    result = train_pal(train, dev, backbone=tiny_backbone, config=cfg, progress=lambda p: phases.append(p.phase),
                       note=notes.append)
    s = result.summary
    assert s["stage1"]["steps"] == 4 and s["stage2"]["pairs"] >= 1 and s["stage2"]["steps"] >= 1
    assert s["stage1"]["best_dev_loss"] <= s["stage1"]["init_dev_loss"]
    assert 0 <= s["stage1"]["dev_selection_accuracy"] <= 1 and s["stage2"]["dev_before"]["loss"] == pytest.approx(
        np.log(2), abs=1e-4)  # stage 2 starts from its own reference
    assert phases.count("done") == 2 and "eval" in phases  # both stages ran in the one loop
    assert any(float((result.stage1[k] - result.final[k]).abs().max()) > 0 for k in result.final)  # DPO moved it
    assert not any("I " in n for n in notes)  # notes carry numbers, not persona or reply text
    out = save_pal(result, result.final, tmp_path / "adapter", {"command": "test"})
    folder, info = adapter_info(out)
    assert info["backbone"] == result.backbone.fingerprint and info["parameters"] > 0


# --- the merged export vs torch+PEFT ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_adapter(tiny_backbone, tmp_path_factory):
    return random_adapter(tiny_backbone, tmp_path_factory.mktemp("pal") / "adapter", scale=0.3)


def _peft_logits(backbone_dir, adapter_dir, ids):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from persona_sdk.training.methods import lora

    config, weights = lora.load(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(str(backbone_dir), dtype=torch.float32)
    known = set(peft.LoraConfig.__dataclass_fields__)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**{k: v for k, v in config.items()
                                                            if k in known and k != "peft_type"}))
    peft.set_peft_model_state_dict(wrapped, weights)
    with torch.no_grad():
        adapted = wrapped(torch.tensor([ids])).logits[0].numpy()  # (T, V) with the adapter, unmerged
        with wrapped.disable_adapter():
            plain = wrapped(torch.tensor([ids])).logits[0].numpy()
    return adapted, plain


def test_merged_adapter_export_matches_torch_peft(tiny_backbone, tiny_adapter, tmp_path):
    from persona_sdk.exporters import ensure_exported, read_manifest
    from persona_sdk.exporters.validation import OrtDecoder, prompt_ids_for
    from persona_sdk.explicit.merge import ensure_merged

    _, info = adapter_info(tiny_adapter)
    merged = ensure_merged("pal", tiny_backbone, tiny_adapter, info["sha256"], info["backbone"], build=True,
                           cache_root=tmp_path)
    fp32 = ensure_exported(merged, "fp32", cache_root=tmp_path)
    int8 = ensure_exported(merged, "int8", cache_root=tmp_path)
    assert read_manifest(fp32)["validation"]["passed"] and read_manifest(int8)["validation"]["passed"]
    assert read_manifest(fp32)["graph"] == "fused"
    ids = prompt_ids_for(fp32)
    adapted, plain = _peft_logits(tiny_backbone, tiny_adapter, ids)
    assert np.abs(adapted - plain).max() > 1e-2  # the adapter matters, so agreement below means something
    ort32, _ = OrtDecoder(fp32).step(ids, OrtDecoder(fp32).empty_past())
    assert np.abs(ort32 - adapted).max() < 1e-4 * max(1.0, np.abs(adapted).max()) + 1e-4
    ort8, _ = OrtDecoder(int8).step(ids, OrtDecoder(int8).empty_past())
    assert (ort8.argmax(-1) == adapted.argmax(-1)).mean() >= 0.8


def test_pal_mode_builds_its_backbone_on_first_use_and_chats(tiny_backbone, tiny_adapter, persona_home):
    from persona_sdk.agent import PersonaAgent

    with pytest.raises(ExportNotReadyError, match="persona explicit export pal"):
        PALMode.open(PERSONA, backbone=tiny_backbone, adapter=tiny_adapter)
    said: list[str] = []
    runtime = RuntimeConfig(variant="fp32")
    mode = PALMode.open(PERSONA, backbone=tiny_backbone, adapter=tiny_adapter, runtime=runtime, build=True,
                        progress=said.append)
    assert said and said[0].startswith("First use of pal")
    assert mode.engine.export_dir.is_relative_to(persona_home)
    history = [Turn(USER, "hi there")]
    prepared = mode.prepare(history)
    assert len(prepared.conditioned_on) == 1 and mode.reply_losses(prepared, "hi").shape == (2,)
    said.clear()  # second time: everything is cached, nothing is announced
    again = PALMode.open(PERSONA, backbone=tiny_backbone, adapter=tiny_adapter, runtime=runtime, progress=said.append)
    assert said == [] and again.engine.export_dir == mode.engine.export_dir
    gen = GenerationConfig(max_new_tokens=5, do_sample=False)
    with PersonaAgent(persona_sentences=PERSONA, explicit="pal", engine=again.engine, generation=gen) as agent:
        reply = agent.reply("hi there")
        assert reply == "".join(mode.reply_stream(history, gen)).strip()
    with pytest.raises(AdapterError, match="another backbone"):
        other = random_adapter(tiny_backbone, persona_home / "other", seed=1)
        info = json.loads((other / "PAL.json").read_text())
        (other / "PAL.json").write_text(json.dumps({**info, "backbone": "0" * 64}))
        PALMode.open(PERSONA, backbone=tiny_backbone, adapter=other)
    tampered = persona_home / "tampered"
    import shutil

    shutil.copytree(tiny_adapter, tampered)
    with open(tampered / "adapter_model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(AdapterError, match="sha256"):
        PALMode.open(PERSONA, backbone=tiny_backbone, adapter=tampered)


# --- the shipped adapter -------------------------------------------------------------------------
def test_shipped_adapter_is_consistent():
    """The shipped PAL adapter matches its recorded sha256, names its data and recipe, and is small."""
    from persona_sdk.explicit.pal import SHIPPED_DIR

    folder, info = adapter_info()
    assert folder == SHIPPED_DIR and info["command"].startswith("persona explicit train pal")
    assert info["data"]["corpus"] == "synthetic-persona-chat" and "CC-BY 4.0" in info["data"]["attribution"]
    assert info["data"]["split"]["by"] == "persona" and isinstance(info["config"]["seed"], int)
    assert info["summary"]["stage1"]["data_sha256"] and info["summary"]["stage2"]["data_sha256"]
    assert info["bytes"] < 8 * 1024 * 1024
    assert (SHIPPED_DIR / "PAL.md").is_file()


def test_shipped_adapter_refuses_another_backbone_in_one_line(tiny_backbone):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "persona_sdk", "chat", "--backbone", str(tiny_backbone), "--persona",
                          "I have a dog.", "--explicit", "pal", "-m", "hi"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "trained for another backbone" in out.stderr
