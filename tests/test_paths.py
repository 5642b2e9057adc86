"""paths: where persona writes, and with what permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest


@pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")
def test_home_and_its_missing_parents_are_0700_under_umask_000(tmp_path):
    home = tmp_path / "a" / "b" / "home"
    vault_root = tmp_path / "v" / "w" / "vault"
    code = ("import os, sys; os.umask(0); from persona_sdk import paths; paths.data_dir(); paths.cache_dir()\n"
            "from persona_sdk.vault import Vault; Vault(sys.argv[1])")
    out = subprocess.run([sys.executable, "-c", code, str(vault_root)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PERSONA_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    for folder in (tmp_path / "a", tmp_path / "a" / "b", home, home / "data", home / "cache",
                   tmp_path / "v", tmp_path / "v" / "w", vault_root):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_existing_folders_are_left_alone(tmp_path, monkeypatch):
    from persona_sdk import paths

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    monkeypatch.setenv("PERSONA_HOME", str(home))
    assert paths.data_dir() == home / "data" and (home / "data").is_dir()
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the user's own folder: not ours to change
