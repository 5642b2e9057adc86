"""`persona backbone export / info` on the tiny backbone (validation included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from persona_sdk.backbone import fingerprint


def run(args, home):
    env = {**os.environ, "PERSONA_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "persona_sdk", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_export_then_info(tiny_backbone, persona_home):
    before = run(["backbone", "info", "--backbone", str(tiny_backbone)], persona_home)
    assert before.returncode == 0, before.stderr
    assert fingerprint(tiny_backbone) in before.stdout and "none yet" in before.stdout

    out = run(["backbone", "export", "--backbone", str(tiny_backbone), "--quant", "int8"], persona_home)
    assert out.returncode == 0, out.stderr
    announced = [line.split(" ONNX")[0] for line in out.stderr.splitlines() if "building it now" in line]
    assert announced == ["No fp32", "No int8"]  # each build says what it is about to do first
    lines = dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == {"fp32", "int8"}
    for variant, folder in lines.items():
        manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
        assert manifest["variant"] == variant and manifest["validation"]["passed"] is True
        assert folder.startswith(str(persona_home))

    after = run(["backbone", "info", "--backbone", str(tiny_backbone)], persona_home)
    assert "onnx fp32" in after.stdout and "onnx int8" in after.stdout
    assert after.stdout.count("fused graph") == 2  # a Llama backbone gets the fused graph


def test_bad_quant_is_a_clear_error(tiny_backbone, persona_home):
    out = run(["backbone", "export", "--backbone", str(tiny_backbone), "--quant", "int3"], persona_home)
    assert out.returncode == 1 and "int8 or int4" in out.stderr and "Traceback" not in out.stderr
