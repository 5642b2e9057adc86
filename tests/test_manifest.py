"""manifest: the export contract's names, and whether a cached export can be used as it is.

Reading and writing manifests against real exports is tested in test_exporters.py.
"""

from __future__ import annotations

import json
import shutil

from persona_sdk import config, manifest
from persona_sdk.backbone import fingerprint
from persona_sdk.manifest import CURRENT, DAMAGED, MANIFEST, MISSING, OUTDATED, REVISION, export_status


def test_io_names_are_built_from_one_definition():
    inputs, outputs = manifest.io_names(2, position_ids=False)
    assert inputs == ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value",
                      "past_key_values.1.key", "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert manifest.io_names(1)[0][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[2:] == manifest.past_names(2) and outputs[1:] == manifest.present_names(2)


def test_runtime_settings_accept_exactly_the_exported_variants():
    assert config.VARIANTS is manifest.VARIANTS
    assert config.DEFAULT_VARIANT in manifest.VARIANTS and config.GPU_VARIANT in manifest.VARIANTS


def test_export_status(tiny_export_cache, tiny_backbone, tiny_onnx, tmp_path):
    fp = fingerprint(tiny_backbone)
    cached = next((tiny_export_cache / "onnx").glob("*/fp32"))
    folder = shutil.copytree(cached, tmp_path / "fp32")
    assert export_status(folder, fp) == (CURRENT, "")
    assert export_status(tmp_path / "nothing", fp)[0] == MISSING
    status, why = export_status(folder, "0" * 64)
    assert status == DAMAGED and "another backbone" in why
    assert export_status(tiny_onnx, fp) == (DAMAGED, f"{tiny_onnx} holds an export that was never validated")

    m = json.loads((folder / MANIFEST).read_text())
    m["revision"] = REVISION - 1
    (folder / MANIFEST).write_text(json.dumps(m))
    status, why = export_status(folder, fp)
    assert status == OUTDATED and f"revision {REVISION - 1}" in why
    del m["revision"]  # exports from before revisions were recorded
    (folder / MANIFEST).write_text(json.dumps(m))
    status, why = export_status(folder, fp)
    assert status == OUTDATED and "revision 1;" in why

    (folder / MANIFEST).write_text("{broken")
    status, why = export_status(folder, fp)
    assert status == DAMAGED and "not valid JSON" in why
