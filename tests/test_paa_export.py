"""PAA through ONNX (exporters/paa_export.py) and at chat time (persona_sdk/explicit/paa.py): parity with the
torch PAAModel, the mode's replies and losses, where the PAA is found, refusals, the CLI end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persona_sdk.config import GenerationConfig
from persona_sdk.conversation import USER, Turn
from persona_sdk.errors import AdapterError, ExportError, ExportNotReadyError
from persona_sdk.explicit import paa_store as S

from explicit_helpers import random_paa

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

PERSONA = ("I have a dog.", "I love pizza.")
HISTORY = [Turn(USER, "hi there, how are you doing today?"), Turn("assistant", "i am fine thanks, and you?"),
           Turn(USER, "what do you do on weekends?")]
CLI = [sys.executable, "-m", "persona_sdk"]


@pytest.fixture(scope="module")
def paa_export(tiny_backbone, tmp_path_factory):
    """(PAA folder, its validated fp32 export, the torch PAAModel loaded from the folder)."""
    from persona_sdk.exporters.paa_export import ensure_paa_exported
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.paa_model import load_paa

    root = tmp_path_factory.mktemp("paa-export")
    bb = load_backbone(tiny_backbone)
    folder = random_paa(bb, root / "paa")
    export = ensure_paa_exported(folder, tiny_backbone, cache_root=root / "cache")
    return folder, export, load_paa(folder, bb)


def _torch_logits(model, p, c, r, masks: bool) -> np.ndarray:
    from persona_sdk.training.paa_model import set_masks

    set_masks(model, masks)
    try:
        with torch.no_grad():
            return model(*(torch.tensor([x]) for x in (p, [1] * len(p), c, [1] * len(c), r)))[0].numpy()
    finally:
        set_masks(model, model.config.masks)


# --- the export -----------------------------------------------------------------------------------
def test_export_is_recorded_next_to_its_graphs(paa_export, tiny_backbone):
    from persona_sdk.backbone import fingerprint

    folder, export, _ = paa_export
    record = S.read_record(export)
    info = S.paa_info(folder)
    assert export == export.parent.parent / f"paa-{info['sha256'][:16]}" / "fp32"
    assert record["paa_sha256"] == info["sha256"] and record["paa_info_sha256"] == S.info_sha256(folder)
    assert record["backbone"] == fingerprint(tiny_backbone) and record["opset"] == 17
    assert record["fused_blocks"] == [0, 1] and record["encoder_outputs"] == S.cross_names(2)
    v = record["validation"]
    assert v["passed"] and v["masks"] == [True, False] and v["argmax_match"]
    assert v["max_abs_logit_diff"] <= v["max_allowed_diff"] and v["max_abs_logit_diff"] < 1e-4
    assert set(record["files"]) == {"encoder.onnx", "encoder.onnx.data", "decoder.onnx", "decoder.onnx.data"}
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")]  # no build leftovers


@pytest.mark.parametrize("masks", [True, False])
def test_encoder_once_then_cached_decoder_steps_match_torch(paa_export, masks):
    """One encoder run, then the response fed 1 + 1 + ... tokens (all cached steps) or 5 then 1s, against
    torch's one full forward: logits at every position."""
    from persona_sdk.exporters.paa_export import OrtPAA

    _, export, model = paa_export
    bb = model.bb
    rng = np.random.default_rng(7)
    ort_paa = OrtPAA(export, bb.layers, bb.kv_heads, bb.head_dim)
    header = list(bb.fmt.header_ids)
    for p_len, c_len, prefill in ((3, 40, 1), (17, 9, 5)):  # τ above and below 1/2
        p, c = rng.integers(0, 300, p_len).tolist(), rng.integers(0, 300, c_len).tolist()
        r = header + rng.integers(0, 300, 8).tolist()
        ref = _torch_logits(model, p, c, r, masks)
        got = ort_paa.logits(ort_paa.encode(p, c), r, masks, prefill)
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
    # the switch is live: the same inputs with the masks the other way give other logits
    other = ort_paa.logits(ort_paa.encode(p, c), r, not masks, prefill)
    assert np.abs(other - got).max() > 1e-3


def test_a_wrong_graph_fails_validation_and_leaves_nothing_behind(paa_export, tiny_backbone, tmp_path, monkeypatch):
    from persona_sdk.exporters import paa_export as PE

    folder = paa_export[0]
    real = PE.fusion_weights

    def off_by_a_little(model):
        weights = real(model)
        weights[1]["context.o"] = weights[1]["context.o"] * 1.01  # one projection 1% off
        return weights

    monkeypatch.setattr(PE, "fusion_weights", off_by_a_little)
    with pytest.raises(ExportError, match="does not match the torch PAA model"):
        PE.ensure_paa_exported(folder, tiny_backbone, cache_root=tmp_path / "cache")
    parent = tmp_path / "cache" / "explicit"
    assert [p.name for p in parent.rglob("*") if p.is_file()] == []  # no graph, no record, no temp folder


# --- the mode -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(paa_export):
    from persona_sdk.explicit.paa import PAAEngine

    return PAAEngine(paa_export[1])


def _torch_greedy(model, prepared, gen, stop_ids, masks: bool) -> list[int]:
    """Greedy decoding of the torch PAAModel: full forward per token, the runtime's Sampler on its logits."""
    from persona_sdk.sampling import Sampler
    from persona_sdk.training.paa_model import set_masks

    p, c, ids = list(prepared.persona_ids), list(prepared.context_ids), list(prepared.prompt_ids)
    sampler = Sampler(gen, int(model.bb.model.config.vocab_size), p + c + ids, stop_ids=stop_ids)
    out = []
    set_masks(model, masks)
    try:
        for _ in range(gen.max_new_tokens):
            with torch.no_grad():
                logits = model(*(torch.tensor([x]) for x in (p, [1] * len(p), c, [1] * len(c), ids + out)))
            token = sampler.pick(logits[0, -1].numpy())
            if token in stop_ids:
                break
            out.append(token)
            sampler.observe(token)
    finally:
        set_masks(model, model.config.masks)
    return out


@pytest.mark.parametrize("masks, penalty", [(True, 1.0), (True, 1.3), (False, 1.3)])
def test_mode_greedy_reply_is_torchs_greedy_decode_token_for_token(paa_export, engine, masks, penalty):
    from persona_sdk.explicit import open_mode
    from persona_sdk.explicit.paa import PAAMode

    model = paa_export[2]
    mode = open_mode("paa", PERSONA, engine=engine, masks=masks)
    assert isinstance(mode, PAAMode) and mode.masks is masks
    gen = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=penalty)
    prepared = mode.prepare(HISTORY, gen)
    # laid out as training lays a reply out (encode_paa), from the same helpers
    from persona_sdk.training.paa_model import encode_paa

    enc = encode_paa(model.bb.fmt, PERSONA, HISTORY, "x", model.config)
    assert prepared.persona_ids == enc.persona and prepared.context_ids == enc.context
    assert list(prepared.prompt_ids) == list(enc.response.ids[: enc.response.n_prompt])
    got = list(engine.generate_ids(prepared, gen, masks=masks))
    want = _torch_greedy(model, prepared, gen, engine.stop_ids, masks)
    assert got == want and len(got) >= 3
    assert "".join(mode.stream(prepared, gen)) == "".join(engine.detokenize(iter(got)))  # the same tokens


def _torch_reply_nll(model, prepared, target: list, masks: bool) -> list[float]:
    """Per-token NLL of ``target`` after the prepared decoder prompt, from torch's one full forward."""
    ids = list(prepared.prompt_ids) + target
    logp = torch.log_softmax(torch.tensor(_torch_logits(model, list(prepared.persona_ids),
                                                        list(prepared.context_ids), ids, masks)), -1)
    n = len(prepared.prompt_ids)
    return [-float(logp[n - 1 + i, t]) for i, t in enumerate(target)]


def test_reply_losses_are_torchs_per_token_nll(paa_export, engine):
    from persona_sdk.explicit.paa import PAAMode

    model = paa_export[2]
    for masks in (True, False):
        mode = PAAMode(PERSONA, engine, masks=masks)
        prepared = mode.prepare(HISTORY)
        reply = "i love pizza and my dog"
        losses = mode.reply_losses(prepared, reply)
        want = _torch_reply_nll(model, prepared, engine.format.reply_ids(reply), masks)
        assert losses.shape == (len(want),) and np.allclose(losses, want, atol=1e-4)


def test_a_paa_trained_on_the_papers_layout_decodes_the_reply_only(tiny_backbone, tmp_path):
    """The layout a PAA was trained on travels with its export: its decoder prompt is the reply header, and
    the losses are torch's on that layout (while the default layout's prompt is the whole context)."""
    from persona_sdk.exporters.paa_export import ensure_paa_exported
    from persona_sdk.explicit.paa import PAAEngine, PAAMode
    from persona_sdk.training.backbone import load_backbone
    from persona_sdk.training.paa_model import load_paa

    bb = load_backbone(tiny_backbone)
    folder = random_paa(bb, tmp_path / "paa", seed=3, decoder_context=False)
    engine = PAAEngine(ensure_paa_exported(folder, tiny_backbone, cache_root=tmp_path / "cache"))
    assert S.read_record(engine.export_dir)["decoder_context"] is False and engine.decoder_context is False
    model = load_paa(folder, bb)
    mode = PAAMode(PERSONA, engine)
    prepared = mode.prepare(HISTORY)
    assert list(prepared.prompt_ids) == list(bb.fmt.header_ids) and len(prepared.context_ids) > 20
    reply = "i love pizza and my dog"
    want = _torch_reply_nll(model, prepared, engine.format.reply_ids(reply), True)
    assert np.allclose(mode.reply_losses(prepared, reply), want, atol=1e-4)


def test_default_layout_decoder_prompt_is_the_context(engine):
    from persona_sdk.explicit.paa import PAAMode

    assert S.read_record(engine.export_dir)["decoder_context"] is True
    prepared = PAAMode(PERSONA, engine).prepare(HISTORY)
    assert prepared.prompt_ids == prepared.context_ids and len(prepared.prompt_ids) > 20


def test_agent_streams_cancels_and_answers_async_in_paa_mode(engine):
    import asyncio

    from persona_sdk import PersonaAgent

    gen = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.3)
    with PersonaAgent(persona_sentences=PERSONA, explicit="paa", engine=engine, generation=gen) as agent:
        assert agent.engine is engine
        whole = agent.reply("what do you do on weekends?")
        agent.reset()
        pieces = agent.stream("what do you do on weekends?")
        first = next(pieces)
        agent.cancel()
        assert list(pieces) == [] and whole.startswith(first)
        assert agent.history[-1].text == first.strip()  # the partial reply is kept, as the user saw it
        agent.reset()
        assert asyncio.run(agent.areply("what do you do on weekends?")) == whole


def test_runtime_side_imports_no_torch():
    from import_graph import eager_closure, import_graph

    heavy = [m for m in eager_closure(import_graph(), "persona_sdk.explicit.paa")
             if m.split(".")[0] in ("torch", "transformers", "onnx") or m.startswith("persona_sdk.exporters")]
    assert heavy == []


# --- where the PAA is found, refusals ---------------------------------------------------------------
def test_nothing_installed_names_the_commands_that_build_it(tiny_backbone, persona_home):
    from persona_sdk import PersonaAgent

    with pytest.raises(AdapterError) as exc:
        PersonaAgent(persona_sentences=PERSONA, explicit="paa", backbone=tiny_backbone, build=True)
    msg = str(exc.value)
    assert str(persona_home / "data" / "explicit" / "paa") in msg
    assert "`persona explicit train paa --spc-csv FILE`" in msg and "`persona explicit export paa --from FOLDER`" in msg
    out = subprocess.run(CLI + ["chat", "--backbone", str(tiny_backbone), "--persona", "I bake cookies.",
                                "--explicit", "paa", "-m", "what do you do for fun?"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == "" and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "persona explicit train paa" in out.stderr


def test_installed_paa_is_found_and_tampering_is_refused(paa_export, tiny_backbone):
    from persona_sdk.explicit.paa import PAAMode, install_paa

    folder, export, _ = paa_export
    installed = install_paa(folder)
    assert installed == S.installed_dir() and S.paa_info(installed)["sha256"] == S.paa_info(folder)["sha256"]
    with pytest.raises(ExportNotReadyError, match="persona explicit export paa --backbone"):
        PAAMode.open(PERSONA, backbone=tiny_backbone)  # this home's cache has no export yet, and no build=True
    shutil.copytree(export, S.export_dir_for(S.paa_info(folder)["sha256"]))  # as if built here
    mode = PAAMode.open(PERSONA, backbone=tiny_backbone)
    assert mode.engine.export_dir == S.export_dir_for(S.paa_info(folder)["sha256"])
    # an edited PAA.json (weights untouched) no longer matches the export built from it
    info = json.loads((installed / S.PAA_INFO).read_text())
    (installed / S.PAA_INFO).write_text(json.dumps({**info, "config": {**info["config"], "masks": False}}))
    with pytest.raises(ExportNotReadyError, match="built from another PAA"):
        PAAMode.open(PERSONA, backbone=tiny_backbone)
    # altered weights are refused outright
    data = bytearray((installed / S.PAA_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (installed / S.PAA_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="sha256"):
        PAAMode.open(PERSONA, backbone=tiny_backbone, build=True)


def test_a_paa_for_another_backbone_is_refused(paa_export, tmp_path):
    from conftest import build_tiny_backbone
    from persona_sdk.explicit.paa import PAAMode

    other = build_tiny_backbone(tmp_path / "other", seed=7)
    with pytest.raises(AdapterError, match="another backbone"):
        PAAMode.open(PERSONA, backbone=other, paa=paa_export[0], build=True)


# --- the CLI, end to end ----------------------------------------------------------------------------
def test_cli_train_then_export_then_chat(tiny_backbone, tmp_path):
    """`train paa` (no --out: installed where chat looks) → `export paa` → `chat --explicit paa` answers with
    the mode's own greedy reply."""
    from explicit_helpers import write_spc_csv

    csv_path = write_spc_csv(tmp_path / "spc.csv", conversations=80, n_personas=80)
    run = dict(capture_output=True, text=True, timeout=300)
    trained = subprocess.run(CLI + ["explicit", "train", "paa", "--spc-csv", str(csv_path), "--backbone",
                                    str(tiny_backbone), "--train-replies", "8", "--dev-replies", "2",
                                    "--batch-size", "4", "--paa-layers", "1", "--threads", "1"], **run)
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip() == str(S.installed_dir()) and "installed" in trained.stderr
    built = subprocess.run(CLI + ["explicit", "export", "paa", "--backbone", str(tiny_backbone)], **run)
    assert built.returncode == 0, built.stderr
    export = Path(built.stdout.strip())
    assert S.read_record(export)["validation"]["passed"] and "validating" in built.stderr
    assert "ready for `persona chat --explicit paa`" in built.stderr
    args = ["chat", "--backbone", str(tiny_backbone), "--persona", "I bake cookies.", "--explicit", "paa",
            "--temperature", "0", "--max-new-tokens", "6", "-m", "what do you do for fun?"]
    chat = subprocess.run(CLI + args, **run)
    assert chat.returncode == 0, chat.stderr
    from persona_sdk import PersonaAgent

    gen = GenerationConfig(max_new_tokens=6, do_sample=False, temperature=0)
    with PersonaAgent(persona_sentences=["I bake cookies."], explicit="paa", backbone=tiny_backbone,
                      generation=gen) as agent:
        assert chat.stdout.strip() == agent.reply("what do you do for fun?").strip()


def test_cli_export_paa_refuses_options_of_pal(tmp_path):
    out = subprocess.run(CLI + ["explicit", "export", "paa", "--adapter", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr and "--from" in out.stderr


def test_int8_export_passes_its_own_looser_check(paa_export, tiny_backbone, tmp_path):
    import onnx

    from persona_sdk.exporters.paa_export import ensure_paa_exported
    from persona_sdk.explicit.paa import PAAEngine, PAAMode

    export = ensure_paa_exported(paa_export[0], tiny_backbone, "int8", cache_root=tmp_path / "cache")
    record = S.read_record(export)
    v = record["validation"]
    assert export.name == "int8" and record["variant"] == "int8" and v["passed"]
    assert v["max_allowed_diff"] == pytest.approx(v["logit_scale"]) and v["top1_agreement"] >= 0.3
    ops = {n.op_type for n in onnx.load(str(export / S.DECODER), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops
    names = [i.name for i in onnx.load(str(export / S.ENCODER), load_external_data=False).graph.initializer]
    assert len(names) == len(set(names))  # a weight the persona and context halves share is stored once
    mode = PAAMode(PERSONA, PAAEngine(export))
    losses = mode.reply_losses(mode.prepare(HISTORY), "i love pizza")
    assert np.isfinite(losses).all()
