"""`persona chat` and `persona --help` from the outside, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PERSONA = [sys.executable, "-m", "persona_sdk"]


def run(args, **kw):
    return subprocess.run(PERSONA + args, capture_output=True, text=True, timeout=180, **kw)


def test_message_prints_only_the_reply(tiny_onnx):
    out = run(["chat", "--backbone", str(tiny_onnx), "--message", "hi there", "--seed", "1", "--temperature", "1",
               "--max-new-tokens", "8"])
    assert out.returncode == 0, out.stderr
    again = run(["chat", "--backbone", str(tiny_onnx), "--message", "hi there", "--seed", "1", "--temperature", "1",
                 "--max-new-tokens", "8", "--spin"])
    assert out.stdout == again.stdout  # the reply, and nothing else, is on stdout (spinning changes speed only)
    assert out.stdout.endswith("\n") and out.stdout.count("\n") >= 1


def test_interactive_chat_reset_and_exit(tiny_onnx):
    out = run(["chat", "--backbone", str(tiny_onnx), "--max-new-tokens", "4"],
              input="hi there\n/reset\nwhat do you do on weekends?\n/exit\nnever read\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("persona> ") == 2
    assert "forgotten" in out.stderr


def test_ctrl_d_exits_cleanly(tiny_onnx):
    out = run(["chat", "--backbone", str(tiny_onnx), "--max-new-tokens", "4"], input="hi there\n")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_backbone_is_a_one_line_error(tmp_path):
    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    for target, needle in ((tmp_path / "missing", "not found"), (not_a_model, "not a causal LM")):
        out = run(["chat", "--backbone", str(target), "--message", "hi"])
        assert out.returncode == 1
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], out.stderr


def test_cuda_requested_without_gpu_is_clear(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():  # a GPU build: the error cannot happen
        return
    out = run(["chat", "--backbone", str(tiny_onnx), "--device", "cuda", "--message", "hi"])
    assert out.returncode == 1
    assert "CUDA was requested" in out.stderr and "Traceback" not in out.stderr


# what `persona --help` must not import: each costs from a tenth of a second to seconds
HEAVY = ("torch", "transformers", "peft", "optimum", "onnx", "onnxruntime", "numpy", "tokenizers", "safetensors",
         "cryptography", "argon2", "keyring", "sklearn")


def test_help_is_instant_because_it_loads_no_heavy_modules():
    """Deterministic stand-in for "fast" (a timing would fail on a busy machine): --help imports
    none of the heavy libraries."""
    code = ("import sys; from persona_sdk.cli import main\n"
            "rc = main(['--help'])\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print('RESULT', rc, ','.join(heavy) or '-', file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = [l for l in out.stderr.splitlines() if l.startswith("RESULT")][0]
    assert line.split()[1:] == ["0", "-"], line
    assert "chat" in out.stdout and "backbone" in out.stdout


def test_python_dash_m_works():
    out = run(["--help"])
    assert out.returncode == 0 and "chat" in out.stdout


def test_chat_as_an_enrolled_profile(tiny_onnx, monkeypatch):
    import numpy as np

    from persona_sdk.agent import PersonaAgent
    from persona_sdk.prefix import Prefix
    from persona_sdk.runtime import Engine
    from persona_sdk.vault import Vault

    engine = Engine(tiny_onnx)
    kv = np.random.default_rng(3).normal(size=(engine.layers, 2, engine.kv_heads, 4, engine.head_dim))
    prefix = Prefix(kv.astype(np.float32), engine.fingerprint, method="test")
    Vault().save("alice", prefix, "correct horse battery staple")
    args = ["chat", "--backbone", str(tiny_onnx), "--name", "alice", "--message", "hi there", "--seed", "2",
            "--temperature", "1", "--max-new-tokens", "8"]
    wrong = run(args, env={**__import__("os").environ, "PERSONA_PASSPHRASE": "wrong"})
    assert wrong.returncode == 1 and wrong.stdout == "" and len(wrong.stderr.strip().splitlines()) == 1
    right = run(args, env={**__import__("os").environ, "PERSONA_PASSPHRASE": "correct horse battery staple"})
    assert right.returncode == 0, right.stderr
    with PersonaAgent.open("alice", passphrase="correct horse battery staple", engine=engine,
                           generation=__import__("persona_sdk").GenerationConfig(
                               seed=2, temperature=1.0, max_new_tokens=8)) as agent:
        assert np.array_equal(agent.prefix.kv, prefix.kv)
        assert right.stdout.strip() == agent.reply("hi there").strip()


def test_the_first_chat_says_it_builds_the_export_before_it_does(tiny_backbone, persona_home):
    args = ["chat", "--backbone", str(tiny_backbone), "--variant", "fp32", "--message", "hi there",
            "--max-new-tokens", "6", "--seed", "1"]
    first = run(args)
    assert first.returncode == 0, first.stderr
    said = first.stderr.splitlines()
    assert said[0].startswith("No fp32 ONNX export of backbone") and "building it now" in said[0]
    assert "minute" in said[0]  # roughly how long
    assert any(line.startswith("Validating the fp32 export") for line in said[1:])  # the build came after
    assert first.stdout.endswith("\n") and "ONNX" not in first.stdout  # stdout: the reply only
    again = run(args)
    assert again.returncode == 0 and "export" not in again.stderr  # cached: nothing built, nothing said
    assert again.stdout == first.stdout


def test_an_outdated_export_without_the_export_extra_is_one_line_naming_the_rebuild(tiny_backbone,
                                                                                    tiny_exported_home):
    from no_export_extras import run_without_export_extras
    from persona_sdk.manifest import MANIFEST, REVISION, export_dir_for

    manifest = export_dir_for(tiny_backbone, "fp32") / MANIFEST
    m = json.loads(manifest.read_text())
    m["revision"] = REVISION - 1
    manifest.write_text(json.dumps(m))
    argv = ["chat", "--backbone", str(tiny_backbone), "--variant", "fp32", "--message", "hi there"]
    out = run_without_export_extras(f"import sys\nfrom persona_sdk.cli import main\nsys.exit(main({argv!r}))")
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the cached fp32 ONNX export"), out.stderr
    assert "outdated" in lines[0] and f"`persona backbone export --backbone {tiny_backbone}`" in lines[0]
    assert "pip install 'persona-sdk[export]'" in lines[0]


def test_message_that_is_not_utf8_is_a_one_line_error(tiny_onnx):
    out = subprocess.run([sys.executable, "-m", "persona_sdk", "chat", "--backbone", str(tiny_onnx), "--message",
                          b"\xff".decode("utf-8", "surrogateescape")], capture_output=True, text=True, timeout=180)
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "not valid text" in lines[0], out.stderr


def test_a_bad_line_in_the_interactive_chat_does_not_end_it(tiny_onnx):
    out = subprocess.run([sys.executable, "-m", "persona_sdk", "chat", "--backbone", str(tiny_onnx),
                          "--max-new-tokens", "3"], input=b"hi \xff there\nhello\n", capture_output=True,
                         timeout=180, env={**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"})
    stderr = out.stderr.decode()
    assert out.returncode == 0, stderr
    assert "Traceback" not in stderr and "not valid text" in stderr
    assert out.stdout.decode().count("persona> ") == 1  # the good line was answered
