"""Where persona reads and writes. One override: ``PERSONA_HOME``.

With ``PERSONA_HOME`` set, everything persona writes lives under it:
``$PERSONA_HOME/cache`` (backbones, ONNX exports) and ``$PERSONA_HOME/data``
(encrypted profiles). Otherwise the platform's user cache / data folders.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "persona"
ENV_HOME = "PERSONA_HOME"


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` and every missing folder above it with ``mode`` -- ``mkdir(parents=True)``
    would give the parents (e.g. ``$PERSONA_HOME`` itself) 0777 under ``umask 000``."""
    missing = []
    parent = path
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:  # made meanwhile by another process
            pass
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=mode)  # raises the right error (a file in the way...)
    return path


def home() -> Path | None:
    """The ``PERSONA_HOME`` override, or None."""
    value = os.environ.get(ENV_HOME)
    return Path(value).expanduser() if value else None


def cache_dir(create: bool = True) -> Path:
    """Folder for rebuildable things: materialised backbones, ONNX exports."""
    root = home()
    if root is not None:
        path = root / "cache"
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir(APP, appauthor=False))
    return ensure_dir(path) if create else path


def data_dir(create: bool = True) -> Path:
    """Folder for the user's encrypted profiles (0700)."""
    root = home()
    if root is not None:
        path = root / "data"
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir(APP, appauthor=False))
    return ensure_dir(path) if create else path
