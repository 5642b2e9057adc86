"""The project's one atomic-write helper: replace or keep, never a mix; modes; errors; leftovers."""

from __future__ import annotations

import os
import stat

import pytest

from persona_sdk.errors import EvalError, VaultError
from persona_sdk.fileio import TMP_MARK, atomic_write, remove_stale_temps


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if TMP_MARK in p.name)


def test_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    assert atomic_write(target, b"new" * 1000) == target
    assert target.read_bytes() == b"new" * 1000 and _leftovers(tmp_path) == []


def test_private_files_are_0600_whatever_the_umask_and_shared_ones_follow_it(tmp_path):
    previous = os.umask(0o000)
    try:
        atomic_write(tmp_path / "secret", b"x")
        atomic_write(tmp_path / "shared", b"x", private=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o666


def test_a_failed_verify_keeps_the_old_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    seen = []

    def refuse(tmp):
        seen.append(tmp.read_bytes())
        raise VaultError("did not verify")

    with pytest.raises(VaultError, match="did not verify"):
        atomic_write(target, b"new", verify=refuse)
    assert seen == [b"new"] and target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_os_errors_pass_through_or_become_the_callers_error(tmp_path):
    missing = tmp_path / "no-such-folder" / "file"
    with pytest.raises(FileNotFoundError):
        atomic_write(missing, b"x")
    with pytest.raises(EvalError, match="cannot write in .*no-such-folder"):
        atomic_write(missing, b"x", error=EvalError)


def test_stale_temp_files_are_removed_for_their_target_only(tmp_path):
    target = tmp_path / "out.persona"
    dead = tmp_path / f".{target.name}{TMP_MARK}{'0' * 16}"
    other = tmp_path / f".other{TMP_MARK}{'0' * 16}"
    dead.write_bytes(b"partial")
    other.write_bytes(b"partial")
    remove_stale_temps(target)
    assert not dead.exists() and other.exists()
