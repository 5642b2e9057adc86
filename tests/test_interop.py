"""PEFT interop (persona_sdk/interop.py, `persona export/import --format peft`).

Round trips on the tiny GQA Llama (2 KV heads for 4 query heads): our profile ->
a PEFT adapter folder -> ``PeftModel.from_pretrained`` gives our runtime's logits;
a prefix trained with PEFT itself -> ``persona import --format peft`` -> ``persona chat``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from persona_sdk import GenerationConfig, PersonaAgent, interop
from persona_sdk._crypto import KdfParams
from persona_sdk.backbone import fingerprint, spec_of
from persona_sdk.cli import main, profiles
from persona_sdk.conversation import USER, Turn
from persona_sdk.errors import BackboneMismatchError, PeftAdapterError, ProfileExistsError
from persona_sdk.prefix import Prefix
from persona_sdk.runtime import Engine
from persona_sdk.vault import Vault

FLOOR = KdfParams.floor()
PROMPT = "hey, back from the trip?"


@pytest.fixture(autouse=True)
def fast_vault(monkeypatch):
    monkeypatch.setattr(profiles, "open_vault", lambda: Vault(kdf=FLOOR))


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx)


@pytest.fixture
def tiny_prefix(tiny_backbone) -> Prefix:
    spec = spec_of(tiny_backbone).prefix_spec(4)  # (layers, 2, kv_heads, P, head_dim) = (2, 2, 2, 4, 16)
    kv = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    return Prefix(kv, backbone=fingerprint(tiny_backbone), method="personal",
                  meta={"steps": 30, "voice": {"topics": ["private", "words"]}})


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _ort_logits(engine: Engine, prefix: Prefix | None, ids: list[int]) -> np.ndarray:
    past, plen = engine.initial_past(prefix)
    return engine.forward(np.asarray([ids], dtype=np.int64), past, plen, all_logits=True).logits[0]  # (T, V)


def _peft_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out.logits[0].float().numpy()  # (T, V)


def _prompt_ids(engine: Engine, prefix: Prefix | None) -> list[int]:
    return engine.prompt_ids([Turn(USER, PROMPT)], prefix, GenerationConfig())


# --- the layout, torch-free --------------------------------------------------------------
def test_table_layout_is_pefts_and_round_trips():
    from persona_sdk.exporters.reference import block_to_peft_embedding

    kv = np.random.default_rng(1).standard_normal((3, 2, 2, 5, 4)).astype(np.float32)
    table = interop.block_to_table(kv)
    assert table.shape == (5, 3 * 2 * 2 * 4)
    np.testing.assert_array_equal(table, block_to_peft_embedding(kv))  # what the parity tests feed PEFT
    # PEFT's get_prompt: view (P, layers*2, kv_heads, head_dim), permute to (layers*2, kv_heads, P, head_dim)
    rows = table.reshape(5, 6, 2, 4).transpose(1, 2, 0, 3)
    np.testing.assert_array_equal(rows[2 * 1], kv[1, 0])  # row 2l: layer l's keys
    np.testing.assert_array_equal(rows[2 * 2 + 1], kv[2, 1])  # row 2l+1: its values
    np.testing.assert_array_equal(interop.table_to_block(table, 3, 2, 4), kv)


def test_interop_imports_no_torch():
    from import_graph import eager_closure, import_graph

    graph = import_graph()
    reached = eager_closure(graph, "persona_sdk.interop") | {i.target for i in graph["persona_sdk.interop"]}
    assert not [m for m in reached if m.split(".")[0] in ("torch", "transformers", "peft", "optimum")]
    assert not [m for m in reached if m.startswith("persona_sdk.exporters")]


def test_written_folder_matches_what_peft_saves(tiny_backbone, tiny_prefix, tmp_path):
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from safetensors import safe_open

    from persona_sdk.exporters.reference import load_model

    ours = interop.write_peft(tiny_prefix, tmp_path / "ours", base_model=str(tiny_backbone))
    theirs = tmp_path / "theirs"
    peft_model = get_peft_model(load_model(tiny_backbone), PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=tiny_prefix.length))
    peft_model.save_pretrained(str(theirs))
    ours_cfg = json.loads((ours / interop.ADAPTER_CONFIG).read_text())
    theirs_cfg = json.loads((theirs / interop.ADAPTER_CONFIG).read_text())
    assert ours_cfg == theirs_cfg  # every key and value, the GQA-adjusted heads and token_dim included
    with safe_open(str(ours / interop.ADAPTER_WEIGHTS), "np") as a, \
            safe_open(str(theirs / interop.ADAPTER_WEIGHTS), "np") as b:
        assert list(a.keys()) == list(b.keys()) == [interop.TABLE_KEY]
        assert a.get_tensor(interop.TABLE_KEY).shape == b.get_tensor(interop.TABLE_KEY).shape
        assert a.metadata()["format"] == b.metadata()["format"] == "pt"
    for f in ours.iterdir():
        assert f.stat().st_mode & 0o077 == 0  # plaintext persona: the owner's only
        assert b"private" not in f.read_bytes()  # the profile's private metadata stays in the vault
    with pytest.raises(ProfileExistsError):
        interop.write_peft(tiny_prefix, ours)
    interop.write_peft(tiny_prefix, ours, force=True)
    assert sorted(p.name for p in ours.iterdir()) == sorted([interop.ADAPTER_CONFIG, interop.ADAPTER_WEIGHTS])


# --- acceptance: our profile -> PEFT folder -> PeftModel logits == our runtime's -----------
def test_export_peft_gives_our_runtimes_logits_in_peftmodel(capsys, monkeypatch, tiny_backbone, tiny_prefix,
                                                            engine, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    folder = tmp_path / "me-adapter"

    code, out, err = run(capsys, "export", "me", "--format", "peft", str(folder))  # no --yes
    assert code == 1 and "UNENCRYPTED" in err and "--yes" in err.splitlines()[-1]
    assert not folder.exists()  # nothing written

    code, out, err = run(capsys, "export", "me", "--format", "peft", str(folder), "--yes",
                         "--backbone", str(tiny_backbone))
    assert code == 0, err
    assert out.strip() == str(folder) and "UNENCRYPTED" in err and "PeftModel.from_pretrained" in err
    assert json.loads((folder / interop.ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == str(tiny_backbone)

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_backbone)), str(folder)).eval()
    ids = _prompt_ids(engine, tiny_prefix)
    peft_logits = _peft_logits(model, ids)
    ours = _ort_logits(engine, tiny_prefix, ids)
    assert np.abs(peft_logits - ours).max() < 1e-4  # fp32, the acceptance tolerance
    assert np.abs(_ort_logits(engine, None, ids) - ours).max() > 0.05  # the prefix matters: the test can fail

    # and back: persona import of our own folder gives the same block, bound to the same backbone
    code, out, err = run(capsys, "import", str(folder), "--format", "peft", "--name", "again",
                         "--backbone", str(tiny_backbone))
    assert code == 0, err
    assert out.strip() == "again" and "does not say which backbone" not in err
    back = Vault().load("again", "pw")
    np.testing.assert_array_equal(back.kv, tiny_prefix.kv)
    assert back.backbone == tiny_prefix.backbone and back.method == "personal"


def test_export_peft_refuses_another_backbone_and_an_existing_adapter(capsys, monkeypatch, tiny_prefix, tmp_path):
    from conftest import build_tiny_backbone

    other = build_tiny_backbone(tmp_path / "other", seed=1)
    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code, _, err = run(capsys, "export", "me", "--format", "peft", str(tmp_path / "a"), "--yes",
                       "--backbone", str(other))
    assert code == 1 and "was made for backbone" in err and not (tmp_path / "a").exists()
    code, _, err = run(capsys, "export", "me", "--format", "peft", str(tmp_path / "a"), "--yes")
    assert code == 0, err
    code, _, err = run(capsys, "export", "me", "--format", "peft", str(tmp_path / "a"), "--yes")
    assert code == 1 and "already holds a PEFT adapter" in err


# --- acceptance: a prefix trained with PEFT -> persona import -> persona chat ---------------
def _train_with_peft(backbone: Path, out: Path, steps: int = 5) -> np.ndarray:
    """Prefix tuning with PEFT itself (through its reparametrisation MLP); returns the trained block."""
    import torch
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from tokenizers import Tokenizer

    from conftest import TINY_CORPUS
    from persona_sdk.exporters.reference import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(backbone), PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, prefix_projection=True, encoder_hidden_size=16))
    model.train()
    tok = Tokenizer.from_file(str(backbone / "tokenizer.json"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for step in range(steps):
        ids = torch.tensor([tok.encode(TINY_CORPUS[step % 4]).ids])
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] != losses[0]  # it trained
    model.save_pretrained(str(out))
    model.eval()
    with torch.no_grad():  # what PEFT injects: (layers*2) tensors of (1, kv_heads, P, head_dim)
        table = model.get_prompt_embedding_to_save(model.active_adapter).numpy()  # (P, layers*2*token_dim)
    return table


def test_a_prefix_trained_with_peft_imports_and_chats(capsys, monkeypatch, tiny_backbone, tiny_onnx, engine,
                                                      tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "trained-elsewhere"
    table = _train_with_peft(tiny_backbone, folder)
    assert json.loads((folder / interop.ADAPTER_CONFIG).read_text())["prefix_projection"] is True
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")

    code, out, err = run(capsys, "import", str(folder), "--format", "peft", "--backbone", str(tiny_backbone))
    assert code == 0, err
    assert out.strip() == "trained-elsewhere"  # the folder's name
    assert "does not say which backbone" in err  # PEFT records no fingerprint: said, then bound by shape
    prefix = Vault().load("trained-elsewhere", "pw", fingerprint=fingerprint(tiny_backbone))
    assert prefix.kv.shape == (2, 2, 2, 6, 16) and prefix.method == interop.IMPORTED_METHOD
    np.testing.assert_allclose(interop.block_to_table(prefix.kv), table, atol=1e-6)

    # the same logits as PEFT's own model loaded from that folder
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_backbone)), str(folder))
    ids = _prompt_ids(engine, prefix)
    assert np.abs(_peft_logits(peft_model.eval(), ids) - _ort_logits(engine, prefix, ids)).max() < 1e-4

    code, out, err = run(capsys, "chat", "--name", "trained-elsewhere", "--message", PROMPT,
                         "--backbone", str(tiny_onnx), "--seed", "4", "--max-new-tokens", "24")
    assert code == 0, err
    gen = GenerationConfig(seed=4, max_new_tokens=24)
    with PersonaAgent(prefix, engine=engine, generation=gen) as agent:
        expected = agent.reply(PROMPT).strip()
    assert out == expected + "\n" and expected  # the persona answered, as the library does in-process


def test_import_refuses_what_does_not_fit(capsys, monkeypatch, tiny_backbone, tiny_prefix, tmp_path):
    from conftest import build_tiny_backbone

    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    folder = interop.write_peft(tiny_prefix, tmp_path / "mine")

    # another backbone of the same shapes: the recorded fingerprint refuses it
    same_shape = build_tiny_backbone(tmp_path / "same-shape", seed=3)
    code, _, err = run(capsys, "import", str(folder), "--format", "peft", "--backbone", str(same_shape))
    assert code == 1 and "was made for backbone" in err
    # another shape (3 layers): refused by shape, also without a fingerprint
    deeper = build_tiny_backbone(tmp_path / "deeper", layers=3)
    anonymous = tmp_path / "anonymous"
    shutil.copytree(folder, anonymous)
    _rewrite_weights(anonymous, metadata={"format": "pt"})
    code, _, err = run(capsys, "import", str(anonymous), "--format", "peft", "--backbone", str(deeper))
    assert code == 1 and "does not fit the backbone in use" in err
    assert Vault().list() == []

    with pytest.raises(BackboneMismatchError):
        interop.prefix_from_peft(folder, spec=spec_of(same_shape), fingerprint=fingerprint(same_shape))


def _rewrite_weights(folder: Path, tensors: dict | None = None, metadata: dict | None = None) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / interop.ADAPTER_WEIGHTS
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=metadata)


def _rewrite_config(folder: Path, **changes) -> None:
    path = folder / interop.ADAPTER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / interop.ADAPTER_CONFIG).unlink(), "has no adapter_config.json"),
    (lambda f: (f / interop.ADAPTER_CONFIG).write_text("{not json"), "not valid JSON"),
    (lambda f: _rewrite_config(f, peft_type="LORA"), "PREFIX_TUNING"),
    (lambda f: _rewrite_config(f, task_type="SEQ_2_SEQ_LM"), "CAUSAL_LM"),
    (lambda f: _rewrite_config(f, num_virtual_tokens=5), "has shape (4, 128)"),
    (lambda f: _rewrite_config(f, num_layers="2"), "num_layers must be a positive integer"),
    (lambda f: (f / interop.ADAPTER_WEIGHTS).rename(f / interop.PICKLED_WEIGHTS), "a pickle"),
    (lambda f: (f / interop.ADAPTER_WEIGHTS).write_bytes(b"\x00" * 5), "not a valid safetensors file"),
    (lambda f: (f / interop.ADAPTER_WEIGHTS).write_bytes(b"\xff" * 64), "not a valid safetensors file"),
    (lambda f: _rewrite_weights(f, {"other": np.zeros((4, 128), np.float32)}), "holds other"),
    (lambda f: _rewrite_weights(f, {interop.TABLE_KEY: np.full((4, 128), np.nan, np.float32)}), "NaN"),
    (lambda f: _rewrite_weights(f, metadata={interop.META_BACKBONE: "../../etc"}), "malformed"),
])
def test_damaged_folders_are_one_clear_error(capsys, monkeypatch, tiny_backbone, tiny_prefix, tmp_path,
                                             damage, message):
    folder = interop.write_peft(tiny_prefix, tmp_path / "adapter")
    damage(folder)
    with pytest.raises(PeftAdapterError) as info:
        interop.read_peft(folder)
    assert message in str(info.value)
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code, out, err = run(capsys, "import", str(folder), "--format", "peft", "--backbone", str(tiny_backbone))
    assert code == 1 and out == "" and message in err and "Traceback" not in err
    assert Vault().list() == []


def test_bf16_and_fp16_tables_import_as_float32(tiny_prefix, tmp_path):
    folder = interop.write_peft(tiny_prefix, tmp_path / "adapter")
    table = interop.block_to_table(tiny_prefix.kv)  # (P, layers*2*token_dim) float32
    _rewrite_weights(folder, {interop.TABLE_KEY: table.astype(np.float16)})
    got = interop.read_peft(folder).table
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, table, atol=5e-3, rtol=1e-3)
    # bfloat16 (no numpy dtype): the top 16 bits of each float32, written by hand
    bf16 = (table.view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps({interop.TABLE_KEY: {"dtype": "BF16", "shape": list(table.shape),
                                             "data_offsets": [0, bf16.nbytes]}}).encode()
    (folder / interop.ADAPTER_WEIGHTS).write_bytes(len(header).to_bytes(8, "little") + header + bf16.tobytes())
    got = interop.read_peft(folder).table
    np.testing.assert_allclose(got, table, atol=0.02, rtol=0.01)
    assert interop.read_peft(folder).fingerprint is None


def test_a_bad_format_or_no_destination_is_a_usage_error_not_a_traceback(capsys, tiny_prefix):
    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    code, out, err = run(capsys, "export", "me", "out", "--format", "xyz")
    assert code == 2 and "Invalid value for '--format'" in err and "Traceback" not in err
    code, out, err = run(capsys, "export", "me")
    assert code == 1 and err.strip() == "Error: where to write? e.g. persona export NAME -o NAME.persona"
