"""`persona list / info / delete / rekey / export / import` (cli/profiles.py).

Passphrases come from the environment (no terminal in tests); the vault uses the
Argon2id floor through the `open_vault` factory, except in the one subprocess test,
which runs the installed `persona` entry point with the real defaults.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keyring
import numpy as np
import pytest
from keyring.backends import fail

from persona_sdk import _crypto
from persona_sdk.backbone import fingerprint, spec_of
from persona_sdk.cli import main, profiles
from persona_sdk.prefix import Prefix
from persona_sdk.vault import Vault

FLOOR = _crypto.KdfParams.floor()


@pytest.fixture(autouse=True)
def fast_vault(monkeypatch):
    monkeypatch.setattr(profiles, "open_vault", lambda: Vault(kdf=FLOOR))


@pytest.fixture
def tiny_prefix(tiny_backbone) -> Prefix:
    spec = spec_of(tiny_backbone).prefix_spec(4)
    kv = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    return Prefix(kv, backbone=fingerprint(tiny_backbone), method="personal", meta={"steps": 30})


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_info(capsys, monkeypatch, tiny_prefix):
    code, out, err = run(capsys, "list")
    assert code == 0 and out == "" and "No profiles yet" in err
    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.startswith("me\tpassphrase\t" + tiny_prefix.backbone[:12])
    code, out, _ = run(capsys, "info", "me", "--no-unlock")
    assert code == 0 and "key: passphrase (Argon2id 19 MiB, 2 passes, 1 lanes)" in out
    assert f"backbone: {tiny_prefix.backbone}" in out and "prefix:" not in out
    code, out, err = run(capsys, "info", "me")  # no terminal, no env: a clean error
    assert code == 1 and "PERSONA_PASSPHRASE" in err and "Traceback" not in err
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code, out, _ = run(capsys, "info", "me")
    assert code == 0 and "prefix: 4 virtual tokens x 2 layers x 2 KV heads x 16 dims (float32" in out
    assert "method: personal" in out and "meta.steps: 30" in out


def test_errors_are_one_line(capsys, monkeypatch, tiny_prefix):
    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "wrong")
    code, out, err = run(capsys, "info", "me")
    assert code == 1 and err.strip().splitlines()[-1].startswith("Error: cannot decrypt profile 'me'")
    code, _, err = run(capsys, "info", "ghost")
    assert code == 1 and err.strip() == "Error: no profile named 'ghost'"
    code, _, err = run(capsys, "info", "../etc")
    assert code == 1 and err.startswith("Error: a profile name is")


def test_delete_asks_unless_yes(capsys, tiny_prefix):
    Vault(kdf=FLOOR).save("me", tiny_prefix, "pw")
    code, _, err = run(capsys, "delete", "me")
    assert code == 1 and "--yes" in err and Vault(kdf=FLOOR).list() == ["me"]
    code, _, err = run(capsys, "delete", "me", "--yes")
    assert code == 0 and "Deleted" in err and Vault(kdf=FLOOR).list() == []


def test_rekey(capsys, monkeypatch, tiny_prefix):
    Vault(kdf=FLOOR).save("me", tiny_prefix, "old")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "old")
    monkeypatch.setenv("PERSONA_NEW_PASSPHRASE", "new")
    code, _, err = run(capsys, "rekey", "me")
    assert code == 0 and "re-encrypted" in err
    back = Vault(kdf=FLOOR).load("me", "new")
    assert back.kv.tobytes() == tiny_prefix.kv.tobytes()


def test_rekey_to_keyring_on_a_headless_machine_uses_a_passphrase(capsys, monkeypatch, tiny_prefix):
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        Vault(kdf=FLOOR).save("me", tiny_prefix, "old")
        monkeypatch.setenv("PERSONA_PASSPHRASE", "old")
        monkeypatch.setenv("PERSONA_NEW_PASSPHRASE", "new")
        code, _, err = run(capsys, "rekey", "me", "--keyring")
        assert code == 0 and "No OS keyring" in err
        assert Vault(kdf=FLOOR).info("me").mode == "passphrase"
        assert Vault(kdf=FLOOR).load("me", "new").method == "personal"
    finally:
        keyring.set_keyring(previous)


def test_export_then_import_on_a_second_home_is_bit_identical(capsys, monkeypatch, tmp_path,
                                                              tiny_backbone, tiny_prefix):
    Vault(kdf=FLOOR).save("me", tiny_prefix, "vault-pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "vault-pw")
    monkeypatch.setenv("PERSONA_EXPORT_PASSPHRASE", "export-pw")
    out_file = tmp_path / "me.persona"
    code, out, err = run(capsys, "export", "me", "-o", str(out_file))
    assert code == 0 and out.strip() == str(out_file) and out_file.is_file()
    code, _, err = run(capsys, "export", "me", "-o", str(out_file))
    assert code == 1 and "--force" in err

    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "second"))
    monkeypatch.setenv("PERSONA_PASSPHRASE", "second-pw")
    code, out, err = run(capsys, "import", str(out_file), "--backbone", str(tiny_backbone))
    assert code == 0 and out.strip() == "me", err
    back = Vault(kdf=FLOOR).load("me", "second-pw", fingerprint=fingerprint(tiny_backbone))
    assert back.kv.dtype == tiny_prefix.kv.dtype and back.kv.shape == tiny_prefix.kv.shape
    assert back.kv.tobytes() == tiny_prefix.kv.tobytes()
    assert (back.backbone, back.method, back.meta) == (tiny_prefix.backbone, "personal", {"steps": 30})

    code, _, err = run(capsys, "import", str(out_file), "--backbone", str(tiny_backbone))
    assert code == 1 and "already exists" in err
    code, out, _ = run(capsys, "import", str(out_file), "--backbone", str(tiny_backbone), "--force")
    assert code == 0
    code, out, _ = run(capsys, "import", str(out_file), "--backbone", str(tiny_backbone), "--name", "copy")
    assert code == 0 and out.strip() == "copy" and Vault(kdf=FLOOR).list() == ["copy", "me"]


def test_import_refuses_a_foreign_backbone_naming_both(capsys, monkeypatch, tmp_path, tiny_backbone):
    foreign = Prefix(np.zeros((2, 2, 2, 4, 8), np.float32), backbone="cd" * 32, method="x")
    vault = Vault(kdf=FLOOR)
    vault.save("other", foreign, "pw")
    exported = vault.export("other", tmp_path / "other.persona", "pw", "export-pw")
    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "second"))
    monkeypatch.setenv("PERSONA_EXPORT_PASSPHRASE", "export-pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    code, out, err = run(capsys, "import", str(exported), "--backbone", str(tiny_backbone))
    assert code == 1 and out == ""
    assert "cdcdcdcdcdcdcdcd" in err and fingerprint(tiny_backbone)[:16] in err
    assert Vault(kdf=FLOOR).list() == []


def test_import_rejects_junk_before_asking_anything(capsys, tmp_path, tiny_backbone):
    junk = tmp_path / "junk.persona"
    junk.write_bytes(b"\x00" * 50)
    code, _, err = run(capsys, "import", str(junk), "--backbone", str(tiny_backbone))
    assert code == 1 and err.strip() == "Error: not a persona file"


def test_installed_entry_point_with_default_kdf(tmp_path, tiny_backbone, tiny_prefix):
    """The real `persona` script (default Argon2id cost) imports an export and lists it."""
    vault = Vault(kdf=FLOOR)
    vault.save("me", tiny_prefix, "pw")
    exported = vault.export("me", tmp_path / "me.persona", "pw", "export-pw")
    env = dict(os.environ, PERSONA_HOME=str(tmp_path / "fresh"), PERSONA_EXPORT_PASSPHRASE="export-pw",
               PERSONA_PASSPHRASE="new-pw")
    exe = Path(sys.executable).parent / "persona"
    done = subprocess.run([str(exe), "import", str(exported), "--backbone", str(tiny_backbone)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([str(exe), "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.stdout.startswith("me\tpassphrase\t")
    fresh = Vault(tmp_path / "fresh" / "data")
    assert fresh.info("me").kdf == _crypto.KdfParams()  # written with the default cost
    assert fresh.load("me", "new-pw").kv.tobytes() == tiny_prefix.kv.tobytes()


def test_list_shows_every_profile_and_marks_the_unreadable_ones(capsys, tiny_prefix, tmp_path):
    vault = Vault(kdf=FLOOR)
    for name in ("alice", "bob", "dave"):
        vault.save(name, tiny_prefix, "pw")
    blob = vault.path("bob").read_bytes()
    vault.path("bob").write_bytes(blob[: len(blob) // 2])  # truncated
    (tmp_path / "real.persona").write_bytes(blob)
    vault.path("carol").symlink_to(tmp_path / "real.persona")  # a symlink
    if hasattr(os, "mkfifo"):
        os.mkfifo(vault.path("erin"))  # a FIFO: must not hang the listing
    code, out, err = run(capsys, "list")
    rows = dict(line.split("\t", 1) for line in out.strip().splitlines())
    assert set(rows) == {"alice", "bob", "carol", "dave"} | ({"erin"} if hasattr(os, "mkfifo") else set())
    assert rows["alice"].startswith("passphrase\t") and rows["dave"].startswith("passphrase\t")
    assert all(rows[n].startswith("unreadable\t") for n in rows if n not in ("alice", "dave"))
    assert code == 1 and err.strip().splitlines()[-1].startswith("Error: ") and "cannot be read" in err


def test_export_over_the_vault_is_refused_before_any_passphrase(capsys, monkeypatch, tiny_prefix):
    vault = Vault(kdf=FLOOR)
    vault.save("alice", tiny_prefix, "pw")
    before = vault.path("alice").read_bytes()
    code, _, err = run(capsys, "export", "alice", "-o", str(vault.path("alice")), "--force")
    assert code == 1 and "vault folder" in err and "PERSONA_PASSPHRASE" not in err
    assert vault.path("alice").read_bytes() == before
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    assert vault.load("alice", "pw").kv.tobytes() == tiny_prefix.kv.tobytes()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_info_on_a_fifo_profile_is_a_clean_error(capsys, tiny_prefix):
    vault = Vault(kdf=FLOOR)
    os.mkfifo(vault.path("trap"))
    out = subprocess.run([sys.executable, "-m", "persona_sdk", "info", "trap"], capture_output=True, text=True,
                         timeout=60, env={**os.environ})
    assert out.returncode == 1 and out.stderr.strip() == "Error: profile 'trap' is not a regular file"
