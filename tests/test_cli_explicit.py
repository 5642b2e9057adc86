"""`persona explicit train pal` and `persona explicit export pal`, as a maintainer runs them (tiny backbone)."""

from __future__ import annotations

import json
import subprocess
import sys

from explicit_helpers import write_spc_csv

CLI = [sys.executable, "-m", "persona_sdk", "explicit"]


def run(args, **kw):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=600, **kw)


def test_train_then_export_then_chat(tiny_backbone, tmp_path):
    csv_path = write_spc_csv(tmp_path / "spc.csv", conversations=80, n_personas=80)
    out, stage1 = tmp_path / "adapter", tmp_path / "stage1"
    trained = run(["train", "pal", "--spc-csv", str(csv_path), "--backbone", str(tiny_backbone), "--out", str(out),
                   "--stage1-out", str(stage1), "--stage1-replies", "8", "--dpo-pairs", "4", "--dev-replies", "2",
                   "--dev-pairs", "2", "--batch-size", "4", "--dpo-batch", "2", "--rank", "2", "--top-layers", "1",
                   "--context-budget", "400", "--reply-budget", "6", "--no-score-selection", "--threads", "1"])
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.strip() == str(out) and "test part is not touched" in trained.stderr
    info = json.loads((out / "PAL.json").read_text())
    assert info["command"].startswith("persona explicit train pal") and info["stage"] == "final"
    assert info["config"]["top_layers"] == 1 and info["data"]["split"]["by"] == "persona"
    assert json.loads((stage1 / "PAL.json").read_text())["stage"] == "stage1"
    built = run(["export", "pal", "--adapter", str(out), "--backbone", str(tiny_backbone), "--variant", "fp32"])
    assert built.returncode == 0, built.stderr
    assert "First use of pal" in built.stderr
    chat = subprocess.run([sys.executable, "-m", "persona_sdk", "chat", "--backbone", built.stdout.strip(),
                           "--persona", "I have a dog.", "--temperature", "0", "--max-new-tokens", "4", "-m", "hi"],
                          capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr  # the merged export is an ordinary export folder


def test_bad_mode_is_a_one_line_error(tmp_path):
    out = run(["train", "prompt", "--spc-csv", str(tmp_path / "none.csv")])
    assert out.returncode == 1 and out.stderr.strip().startswith("Error:") and "pal" in out.stderr
    missing = run(["train", "pal", "--spc-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")])
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
