"""engines: find a cached export, or build one only when asked and after saying so."""

from __future__ import annotations

import json

import pytest

from no_export_extras import run_without_export_extras
from persona_sdk import engines
from persona_sdk.config import RuntimeConfig
from persona_sdk.errors import BackboneError, ExportNotReadyError, ExportOutdatedError
from persona_sdk.manifest import MANIFEST, MODEL, REVISION, export_dir_for, read_manifest


def _age(folder, revision=REVISION - 1) -> None:
    """Make a cached export look built by an older exporter."""
    m = json.loads((folder / MANIFEST).read_text())
    m["revision"] = revision
    (folder / MANIFEST).write_text(json.dumps(m))


def test_a_current_cached_export_is_found(tiny_backbone, tiny_exported_home):
    found = engines.find_export(tiny_backbone, "fp32")
    assert found == export_dir_for(tiny_backbone, "fp32")
    assert found.is_relative_to(tiny_exported_home)
    engine = engines.open_engine(tiny_backbone, RuntimeConfig(variant="fp32"))
    assert engine.export_dir == found


def test_an_export_folder_is_used_as_it_is(tiny_onnx):
    assert engines.find_export(tiny_onnx, "int8") == tiny_onnx  # the folder's own variant, no lookup


def test_a_missing_export_is_an_error_naming_the_command(tiny_backbone, persona_home):
    with pytest.raises(ExportNotReadyError) as info:
        engines.find_export(tiny_backbone, "int8")
    message = str(info.value)
    assert f"persona backbone export --quant int8 --backbone {tiny_backbone}" in message
    assert "no int8 ONNX export" in message and "build=True" in message
    assert not (persona_home / "cache" / "onnx").exists()  # nothing was built
    with pytest.raises(ExportNotReadyError, match="persona backbone export --fp16"):
        engines.open_engine(tiny_backbone, RuntimeConfig(variant="fp16"))


def test_the_default_backbone_is_not_set_up_silently(persona_home):
    from persona_sdk import PersonaAgent

    with pytest.raises(ExportNotReadyError, match=r"default backbone is not set up.*`persona backbone export --quant int8`"):
        PersonaAgent(device="cpu")  # int8 on CPU
    assert not (persona_home / "cache" / "backbones").exists()


def test_an_outdated_export_is_an_error_naming_the_rebuild_command(tiny_backbone, tiny_exported_home):
    folder = export_dir_for(tiny_backbone, "fp32")
    _age(folder)
    with pytest.raises(ExportOutdatedError) as info:
        engines.find_export(tiny_backbone, "fp32")
    message = str(info.value)
    assert "outdated: it was built by an older exporter" in message and f"rebuild it once with `persona backbone export --backbone {tiny_backbone}`" in message
    assert f"pass {folder} as the backbone" in message  # the way to keep chatting with it meanwhile
    assert read_manifest(folder)["revision"] == REVISION - 1  # untouched
    assert engines.find_export(folder, "fp32") == folder  # and that way works


def test_a_build_is_announced_before_it_starts(tiny_backbone, persona_home):
    said: list[str] = []
    folder = engines.find_export(tiny_backbone, "fp32", said.append, build=True)
    assert read_manifest(folder)["validation"]["passed"] and folder.is_relative_to(persona_home)
    first = said[0]
    assert first.startswith("No fp32 ONNX export of backbone") and "building it now" in first
    assert "minute" in first and str(folder) in first  # roughly how long, and where it goes
    assert any("Validating" in s for s in said[1:]) and "ready" in said[-1]
    said.clear()
    assert engines.find_export(tiny_backbone, "fp32", said.append, build=True) == folder
    assert said == []  # the second time there is nothing to build or say


def test_an_outdated_export_is_rebuilt_when_asked(tiny_backbone, tiny_exported_home):
    folder = export_dir_for(tiny_backbone, "fp32")
    _age(folder)
    said: list[str] = []
    assert engines.find_export(tiny_backbone, "fp32", said.append, build=True) == folder
    assert "older exporter: rebuilding it now" in said[0]
    assert read_manifest(folder)["revision"] == REVISION


def test_a_damaged_export_names_the_rebuild_command(tiny_backbone, tiny_exported_home):
    folder = export_dir_for(tiny_backbone, "fp32")
    (folder / MODEL).write_bytes(b"short")
    with pytest.raises(ExportNotReadyError, match=r"unusable \(model file .* is corrupt.*rebuild it once with"):
        engines.find_export(tiny_backbone, "fp32")


def test_a_build_without_the_export_extra_names_what_to_install(tiny_backbone, tiny_exported_home):
    """A chat-only install (no torch) with an outdated cached export: the error names the rebuild command."""
    folder = export_dir_for(tiny_backbone, "fp32")
    _age(folder)
    code = (
        "from persona_sdk import engines\n"
        "from persona_sdk.errors import ExportOutdatedError\n"
        "assert not engines.can_build()\n"
        "try:\n"
        f"    engines.find_export({str(tiny_backbone)!r}, 'fp32', print, build=True)\n"
        "except ExportOutdatedError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    out = run_without_export_extras(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR ")  # nothing announced: it cannot build
    assert f"rebuild it with `persona backbone export --backbone {tiny_backbone}`" in out.stdout
    assert "pip install 'persona-sdk[export]'" in out.stdout
    assert read_manifest(folder)["revision"] == REVISION - 1


def test_export_commands():
    assert engines.export_command("fp32") == "persona backbone export"
    assert engines.export_command("int4", "default") == "persona backbone export --quant int4"
    assert engines.export_command("fp16", "/my models/llm") == "persona backbone export --fp16 --backbone '/my models/llm'"


def test_chat_variant():
    assert engines.chat_variant(RuntimeConfig(variant="int4")) == "int4"
    assert engines.chat_variant(RuntimeConfig(device="cpu")) == "int8"


def test_a_missing_backbone_folder_is_a_backbone_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        engines.find_export(tmp_path / "nope", "fp32")
