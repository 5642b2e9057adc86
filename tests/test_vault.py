"""The vault tries to be broken here: wrong keys, every byte flipped, random mutations,
renamed and spliced files, foreign backbones, SIGKILLed writers, concurrent writers,
plaintext on disk, file modes, export / import between two homes.

All files use the Argon2id floor (19 MiB, 2 passes, 1 lane), the weakest setting the
vault accepts anywhere, so they run fast; the default is 64 MiB, 3 passes, 4 lanes.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keyring
import keyring.errors
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyring.backend import KeyringBackend
from keyring.backends import fail

from persona_sdk import _crypto, vault as vault_mod
from persona_sdk.backbone import BackboneSpec
from persona_sdk.errors import (
    BackboneMismatchError,
    DecryptionError,
    KdfParameterError,
    KeyringUnavailableError,
    PassphraseRequiredError,
    PersonaFileError,
    PrefixShapeError,
    ProfileExistsError,
    ProfileNameError,
    ProfileNotFoundError,
    UnsupportedFormatError,
    VaultError,
)
from persona_sdk.prefix import Prefix
from persona_sdk.vault import KEYRING, Vault, VaultPermissionWarning

FP = "ab" * 32
OTHER_FP = "cd" * 32
FLOOR = _crypto.KdfParams.floor()
CANARY = b"CANARY!!"  # as float32 (little endian): two finite numbers
METHOD_CANARY = "method-canary-7f3a"


class MemoryKeyring(KeyringBackend):
    """An in-memory OS keyring stand-in."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        if self.store.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not found")


@pytest.fixture
def memkeyring():
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def headless():
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def vault(persona_home) -> Vault:
    return Vault(kdf=FLOOR)


def make_prefix(value: float | None = None, shape=(2, 2, 1, 4, 8), fp: str = FP) -> Prefix:
    n = int(np.prod(shape))
    if value is None:  # the canary pattern fills the tensor
        kv = np.frombuffer(CANARY * (n // 2), dtype="<f4").reshape(shape).copy()
    else:
        kv = np.full(shape, value, dtype=np.float32)
    return Prefix(kv, backbone=fp, method=METHOD_CANARY, meta={"steps": 12, "val_loss": 3.25})


def small_prefix(offset: float = 0.0) -> Prefix:
    kv = np.arange(4, dtype=np.float32).reshape(1, 2, 1, 1, 2) + np.float32(offset)
    return Prefix(kv, backbone=FP, method="m")


def same_prefix(a: Prefix, b: Prefix) -> bool:
    return (a.kv.dtype == b.kv.dtype and a.kv.shape == b.kv.shape and a.kv.tobytes() == b.kv.tobytes()
            and a.backbone == b.backbone and a.method == b.method and a.meta == b.meta)


def tmp_files(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if ".tmp-" in p.name]


# --- round trips and keys -------------------------------------------------------
def test_round_trip_passphrase(vault):
    prefix = make_prefix()
    path = vault.save("me", prefix, "correct horse")
    assert path == vault.root / "me.persona" and vault.list() == ["me"]
    back = vault.load("me", "correct horse", fingerprint=FP)
    assert same_prefix(prefix, back)
    info = vault.info("me")
    assert (info.mode, info.kdf, info.backbone, info.format_version) == ("passphrase", FLOOR, FP, 1)
    assert info.file_bytes == path.stat().st_size


def test_default_kdf_is_used_when_not_overridden(persona_home):
    v = Vault()
    v.save("me", small_prefix(), "pw")
    assert v.info("me").kdf == _crypto.KdfParams()
    assert v.root == persona_home / "data"


def test_env_passphrase(vault, monkeypatch):
    monkeypatch.setenv("PERSONA_PASSPHRASE", "from-env")
    vault.save("me", small_prefix())
    assert vault.info("me").mode == "passphrase"
    assert same_prefix(vault.load("me"), small_prefix())
    monkeypatch.delenv("PERSONA_PASSPHRASE")
    with pytest.raises(PassphraseRequiredError, match="PERSONA_PASSPHRASE"):
        vault.load("me")
    assert same_prefix(vault.load("me", "from-env"), small_prefix())


def test_wrong_passphrase(vault):
    vault.save("me", small_prefix(), "pw")
    before = vault.path("me").read_bytes()
    with pytest.raises(DecryptionError, match="wrong passphrase or key, or the file was modified"):
        vault.load("me", "PW")
    assert vault.path("me").read_bytes() == before


def test_keyring_round_trip_wrong_key_and_missing_key(vault, memkeyring):
    vault.save("me", small_prefix(), KEYRING)
    info = vault.info("me")
    assert info.mode == "keyring" and info.kdf is None
    assert len(memkeyring.store) == 1
    assert same_prefix(vault.load("me"), small_prefix())
    (entry,) = memkeyring.store
    assert entry[0] == "persona-sdk"
    memkeyring.store[entry] = __import__("base64").b64encode(os.urandom(32)).decode()  # wrong key
    with pytest.raises(DecryptionError):
        vault.load("me")
    memkeyring.store.clear()
    with pytest.raises(KeyringUnavailableError, match="export / import"):
        vault.load("me")


def test_passphrase_none_uses_keyring_when_present(vault, memkeyring):
    vault.save("me", small_prefix())
    vault.save("pw", small_prefix(), "pw")
    assert vault.info("me").mode == "keyring"
    assert vault_mod.needs_passphrase("pw") and not vault_mod.needs_passphrase("me")
    assert vault_mod.needs_passphrase()  # no name: cannot tell
    with pytest.raises(ProfileNotFoundError):
        vault_mod.needs_passphrase("ghost")


def test_headless_keyring_falls_back_to_a_passphrase(vault, headless):
    assert not vault_mod.keyring_available()
    with pytest.raises(PassphraseRequiredError, match="no OS keyring"):
        vault.save("me", small_prefix())
    with pytest.raises(PassphraseRequiredError):
        vault.save("me", small_prefix(), KEYRING)
    assert vault.list() == [] and not any(vault.root.glob("*.persona"))
    vault.save("me", small_prefix(), "fallback")  # the fallback: a passphrase, never a key file
    assert vault.info("me").mode == "passphrase"
    assert sorted(p.name for p in vault.root.iterdir()) == [".lock", "me.persona"]


def test_keyring_profile_on_headless_machine(vault, memkeyring):
    vault.save("me", small_prefix(), KEYRING)
    keyring.set_keyring(fail.Keyring())
    with pytest.raises(KeyringUnavailableError):
        vault.load("me")


# --- names, existence -------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "../x", "a/b", "a\\b", ".hidden", "..", "x" * 65, "a\0b",
                                  "me.persona", "-dash", "sp ace", "a..b", "é"])
def test_bad_names_rejected(vault, name):
    with pytest.raises(ProfileNameError):
        vault.save(name, small_prefix(), "pw")
    with pytest.raises(ProfileNameError):
        vault.load(name, "pw")


def test_missing_existing_and_force(vault):
    with pytest.raises(ProfileNotFoundError):
        vault.load("ghost", "pw")
    with pytest.raises(ProfileNotFoundError):
        vault.delete("ghost")
    with pytest.raises(ProfileNotFoundError):
        vault.info("ghost")
    vault.save("me", make_prefix(1.0), "pw")
    with pytest.raises(ProfileExistsError):
        vault.save("me", make_prefix(2.0), "pw")
    assert vault.load("me", "pw").kv[0, 0, 0, 0, 0] == 1.0
    vault.save("me", make_prefix(2.0), "pw2", force=True)
    assert vault.load("me", "pw2").kv[0, 0, 0, 0, 0] == 2.0


def test_delete_removes_file_and_keyring_entry(vault, memkeyring):
    vault.save("a", small_prefix(), KEYRING)
    vault.save("b", small_prefix(), "pw")
    vault.delete("a")
    vault.delete("b")
    assert vault.list() == [] and memkeyring.store == {}


def test_replacing_a_keyring_profile_drops_its_old_key(vault, memkeyring):
    vault.save("me", small_prefix(), KEYRING)
    vault.save("me", small_prefix(), KEYRING, force=True)
    assert len(memkeyring.store) == 1
    assert same_prefix(vault.load("me"), small_prefix())


# --- backbone and shape checks ----------------------------------------------------
def test_foreign_fingerprint_named_and_refused_before_kdf(vault, monkeypatch):
    vault.save("me", small_prefix(), "pw")
    monkeypatch.setattr(_crypto, "_argon2id", lambda *a: pytest.fail("KDF ran"))
    with pytest.raises(BackboneMismatchError) as exc:
        vault.load("me", "pw", fingerprint=OTHER_FP)
    assert FP[:16] in str(exc.value) and OTHER_FP[:16] in str(exc.value)


def test_expect_spec(vault):
    prefix = make_prefix()  # (layers 2, kv_heads 1, P 4, head_dim 8)
    vault.save("me", prefix, "pw")
    ok = BackboneSpec(layers=2, heads=2, kv_heads=1, head_dim=8, hidden=16, vocab_size=10,
                      max_positions=64, model_type="llama")
    assert same_prefix(vault.load("me", "pw", expect=ok), prefix)
    assert same_prefix(vault.load("me", "pw", expect=prefix.spec), prefix)
    bad = BackboneSpec(layers=3, heads=2, kv_heads=1, head_dim=8, hidden=16, vocab_size=10,
                       max_positions=64, model_type="llama")
    with pytest.raises(PrefixShapeError):
        vault.load("me", "pw", expect=bad)
    with pytest.raises(PrefixShapeError, match="length"):
        vault.load("me", "pw", expect=ok.prefix_spec(5))
    with pytest.raises(PrefixShapeError, match="dtype"):
        vault.load("me", "pw", expect=ok.prefix_spec(4, "float16"))


def test_prefix_without_fingerprint_is_refused(vault):
    with pytest.raises(VaultError, match="fingerprint"):
        vault.save("me", Prefix(np.zeros((1, 2, 1, 1, 2), np.float32), backbone=""), "pw")


# --- tampering ------------------------------------------------------------------
def _flip_all(vault: Vault, name: str, positions, passphrase) -> dict[int, BaseException]:
    path = vault.path(name)
    original = path.read_bytes()
    errors = {}
    try:
        for i in positions:
            bad = bytearray(original)
            bad[i] ^= 0xFF
            path.write_bytes(bytes(bad))
            with pytest.raises((PersonaFileError, KeyringUnavailableError)) as exc:
                vault.load(name, passphrase)
            assert path.read_bytes() == bytes(bad), f"load changed the file (byte {i})"
            errors[i] = exc.value
    finally:
        path.write_bytes(original)
    return errors


def _check_flip_errors(errors, reference: str, keyring_mode: bool) -> None:
    for i, exc in errors.items():
        if i < _crypto.OFF_SALT:  # public structure fields: a precise, still clean, error
            assert isinstance(exc, (UnsupportedFormatError, KdfParameterError, DecryptionError)), i
        elif keyring_mode and i < _crypto.OFF_WRAP_NONCE:  # the salt names the keyring entry
            assert isinstance(exc, KeyringUnavailableError), i
        elif i < _crypto.OFF_LENGTH or i >= _crypto.OFF_LENGTH + 8:
            # key material, fingerprint, wrapped key, commitment, body: one indistinguishable error
            assert type(exc) is DecryptionError and str(exc) == reference, i
        else:  # the payload length no longer matches the file size
            assert isinstance(exc, UnsupportedFormatError), i


def test_every_byte_flipped_keyring_mode(vault, memkeyring):
    vault.save("me", small_prefix(), KEYRING)
    n = vault.path("me").stat().st_size
    errors = _flip_all(vault, "me", range(n), None)
    (entry,) = memkeyring.store
    good = memkeyring.store[entry]
    memkeyring.store[entry] = __import__("base64").b64encode(b"x" * 32).decode()
    with pytest.raises(DecryptionError) as wrong:  # the wrong-key message, for comparison
        vault.load("me")
    memkeyring.store[entry] = good
    _check_flip_errors(errors, str(wrong.value), keyring_mode=True)
    assert same_prefix(vault.load("me"), small_prefix())


def test_kdf_bytes_and_a_stride_of_the_rest_flipped_passphrase_mode(vault):
    vault.save("me", small_prefix(), "pw")
    n = vault.path("me").stat().st_size
    # every byte that feeds the KDF (structure, parameters, salt); the rest of the path after
    # the KEK is the keyring-mode test's, which flips every byte: here a stride keeps it fast
    positions = (list(range(_crypto.OFF_WRAP_NONCE)) + list(range(_crypto.OFF_WRAP_NONCE, n, 7))
                 + list(range(_crypto.OFF_LENGTH, _crypto.OFF_LENGTH + 8)) + [n - 1])
    with pytest.raises(DecryptionError) as wrong:
        vault.load("me", "not-it")
    errors = _flip_all(vault, "me", positions, "pw")
    _check_flip_errors(errors, str(wrong.value), keyring_mode=False)
    assert same_prefix(vault.load("me", "pw"), small_prefix())


def test_random_mutations_hypothesis(vault, memkeyring):
    vault.save("me", small_prefix(), KEYRING)
    vault.save("pw", small_prefix(), "pw")
    originals = {name: vault.path(name).read_bytes() for name in ("me", "pw")}

    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.data())
    def run(data):
        name = data.draw(st.sampled_from(["me"] * 5 + ["pw"]))
        raw = bytearray(originals[name])
        for _ in range(data.draw(st.integers(1, 6))):
            op = data.draw(st.sampled_from(["set", "set", "insert", "delete", "cut", "append"]))
            pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
            if op == "set" and raw:
                raw[pos] = data.draw(st.integers(0, 255))
            elif op == "insert":
                raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            elif op == "delete" and raw:
                del raw[pos]
            elif op == "cut":
                del raw[pos:]
            elif op == "append":
                raw += data.draw(st.binary(min_size=1, max_size=64))
        if bytes(raw) == originals[name]:
            return
        path = vault.path(name)
        path.write_bytes(bytes(raw))
        try:
            with pytest.raises((PersonaFileError, KeyringUnavailableError)):
                vault.load(name, "pw")
            assert path.read_bytes() == bytes(raw)
        finally:
            path.write_bytes(originals[name])

    run()


def test_renamed_or_swapped_profile_does_not_open(vault):
    vault.save("alice", small_prefix(), "pw")
    vault.save("bob", make_prefix(), "pw")
    a, b = vault.path("alice").read_bytes(), vault.path("bob").read_bytes()
    vault.path("alice").write_bytes(b)
    with pytest.raises(DecryptionError):
        vault.load("alice", "pw")
    vault.path("alice").write_bytes(a)
    assert same_prefix(vault.load("alice", "pw"), small_prefix())


def test_spliced_body_in_the_vault(vault):
    vault.save("me", small_prefix(), "pw")
    first = vault.path("me").read_bytes()
    vault.save("me", small_prefix(7.0), "pw", force=True)
    second = vault.path("me").read_bytes()
    assert len(first) == len(second)
    vault.path("me").write_bytes(first[: _crypto.HEADER_LEN] + second[_crypto.HEADER_LEN:])
    with pytest.raises(DecryptionError):
        vault.load("me", "pw")


def test_huge_declared_length_and_huge_file_refused_cheaply(vault, monkeypatch):
    vault.save("me", small_prefix(), "pw")
    raw = bytearray(vault.path("me").read_bytes())
    raw[_crypto.OFF_LENGTH:_crypto.OFF_LENGTH + 8] = b"\xff" * 8
    vault.path("me").write_bytes(bytes(raw))
    monkeypatch.setattr(_crypto, "_argon2id", lambda *a: pytest.fail("KDF ran"))
    with pytest.raises(UnsupportedFormatError, match="implausible"):
        vault.load("me", "pw")
    with open(vault.path("me"), "r+b") as fh:  # sparse 300 MB file: refused from its size
        fh.truncate(_crypto.MAX_FILE + 1)
    with pytest.raises(UnsupportedFormatError, match="too large"):
        vault.load("me", "pw")


def test_symlinked_profile_refused(vault, tmp_path):
    vault.save("me", small_prefix(), "pw")
    real = tmp_path / "elsewhere.persona"
    vault.path("me").rename(real)
    vault.path("me").symlink_to(real)
    with pytest.raises(VaultError):
        vault.load("me", "pw")


# --- rekey -----------------------------------------------------------------------
def test_rekey_passphrase_and_keyring(vault, memkeyring):
    prefix = make_prefix()
    vault.save("me", prefix, "old")
    before = vault.path("me").read_bytes()
    with pytest.raises(DecryptionError):
        vault.rekey("me", "wrong", "new")
    assert vault.path("me").read_bytes() == before
    vault.rekey("me", "old", "new")
    with pytest.raises(DecryptionError):
        vault.load("me", "old")
    assert same_prefix(vault.load("me", "new"), prefix)
    vault.rekey("me", "new", KEYRING)
    assert vault.info("me").mode == "keyring" and len(memkeyring.store) == 1
    assert same_prefix(vault.load("me"), prefix)
    vault.rekey("me", None, "back")
    assert vault.info("me").mode == "passphrase" and memkeyring.store == {}
    assert same_prefix(vault.load("me", "back"), prefix)
    assert tmp_files(vault.root) == []


def test_rekey_verifies_the_new_file_before_the_old_one_goes(vault, monkeypatch):
    vault.save("me", small_prefix(), "old")
    before = vault.path("me").read_bytes()
    real_seal = _crypto.seal

    def broken_seal(*args, **kwargs):
        blob = bytearray(real_seal(*args, **kwargs))
        blob[-1] ^= 1  # a write that went wrong
        return bytes(blob)

    monkeypatch.setattr(_crypto, "seal", broken_seal)
    with pytest.raises(DecryptionError):
        vault.rekey("me", "old", "new")
    assert vault.path("me").read_bytes() == before
    assert tmp_files(vault.root) == []
    monkeypatch.setattr(_crypto, "seal", real_seal)
    assert same_prefix(vault.load("me", "old"), small_prefix())


# --- disk: modes, plaintext, temp files, locking ---------------------------------
def test_file_modes_0600_0700(vault, memkeyring, tmp_path):
    vault.save("a", small_prefix(), "pw")
    vault.save("b", small_prefix(), KEYRING)
    out = vault.export("a", tmp_path / "a.persona", "pw", "export-pw")
    assert stat.S_IMODE(vault.root.stat().st_mode) == 0o700
    for p in [*vault.root.iterdir(), out]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def test_looser_modes_fixed_with_a_warning(vault):
    vault.save("me", small_prefix(), "pw")
    os.chmod(vault.path("me"), 0o644)
    with pytest.warns(VaultPermissionWarning, match="readable by other users"):
        vault.load("me", "pw")
    assert stat.S_IMODE(vault.path("me").stat().st_mode) == 0o600
    os.chmod(vault.root, 0o755)
    with pytest.warns(VaultPermissionWarning, match="accessible to other users"):
        Vault(kdf=FLOOR)
    assert stat.S_IMODE(vault.root.stat().st_mode) == 0o700


def test_no_plaintext_on_disk(vault, memkeyring, persona_home, tmp_path):
    prefix = make_prefix()
    assert CANARY in prefix.kv.tobytes()
    vault.save("pw", prefix, "pw")
    vault.save("kr", prefix, KEYRING)
    vault.rekey("pw", "pw", "pw2")
    vault.export("kr", persona_home / "out.persona", None, "export-pw")
    needles = [CANARY, prefix.kv.tobytes()[:64], METHOD_CANARY.encode(), b"persona-prefix/1",
               b"val_loss", b'"kv"']
    files = [p for p in persona_home.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for p in files:
        data = p.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {p.name}"


def test_leftover_temp_files_cleaned_by_next_operation(vault):
    vault.save("me", small_prefix(), "pw")
    leftover = vault.root / ".me.persona.tmp-deadbeefdeadbeef"
    leftover.write_bytes(b"half a file")
    assert vault.list() == ["me"]
    assert tmp_files(vault.root) == []
    leftover.write_bytes(b"half a file")
    vault.load("me", "pw")
    assert tmp_files(vault.root) == []


def test_busy_vault_times_out_cleanly(vault):
    other = Vault(kdf=FLOOR, lock_timeout=0.2)
    with vault._locked():
        with pytest.raises(VaultError, match="busy"):
            other.list()
    assert other.list() == []


# --- export / import -----------------------------------------------------------------
def test_export_import_into_a_second_empty_home_is_bit_identical(vault, tmp_path, monkeypatch):
    prefix = make_prefix()
    vault.save("me", prefix, "vault-pw")
    out = vault.export("me", tmp_path / "me.persona", "vault-pw", "export-pw")
    original_payload, _ = vault._load_payload("me", "vault-pw", None)
    monkeypatch.setenv("PERSONA_HOME", str(tmp_path / "second-home"))
    second = Vault(kdf=FLOOR)
    assert second.list() == []
    assert second.import_file(out, "export-pw", "other-pw", fingerprint=FP) == "me"
    back = second.load("me", "other-pw")
    assert same_prefix(back, prefix) and back.kv.tobytes() == prefix.kv.tobytes()
    assert second._load_payload("me", "other-pw", None)[0] == original_payload  # byte for byte
    with pytest.raises(ProfileExistsError):
        second.import_file(out, "export-pw", "other-pw")
    assert second.import_file(out, "export-pw", "x", name="copy") == "copy"
    second.import_file(out, "export-pw", "y", name="copy", force=True)
    assert same_prefix(second.load("copy", "y"), prefix)


def test_export_file_checks(vault, tmp_path, monkeypatch):
    vault.save("me", small_prefix(), "pw")
    out = vault.export("me", tmp_path / "me.persona", "pw", "export-pw")
    with pytest.raises(ProfileExistsError):
        vault.export("me", out, "pw", "export-pw")
    with pytest.raises(PassphraseRequiredError, match="PERSONA_EXPORT_PASSPHRASE"):
        vault.export("me", tmp_path / "again.persona", "pw", None)
    with pytest.raises(DecryptionError):
        vault.import_file(out, "wrong", "pw", name="x")
    with pytest.raises(BackboneMismatchError) as exc:
        vault.import_file(out, "export-pw", "pw", name="x", fingerprint=OTHER_FP)
    assert FP[:16] in str(exc.value) and OTHER_FP[:16] in str(exc.value)
    with pytest.raises(UnsupportedFormatError, match="not a persona export file"):
        vault.import_file(vault.path("me"), "pw", "pw", name="x")  # a profile is not an export
    junk = tmp_path / "junk.persona"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(UnsupportedFormatError, match="not a persona file"):
        vault.import_file(junk, "export-pw", "pw")
    with pytest.raises(ProfileNameError, match="--name"):
        vault.import_file(tmp_path / "bad name!.persona", "export-pw", "pw")
    assert vault.list() == ["me"]
    monkeypatch.setenv("PERSONA_EXPORT_PASSPHRASE", "export-pw")
    monkeypatch.setenv("PERSONA_PASSPHRASE", "pw")
    assert vault.import_file(out, name="viaenv") == "viaenv"


def test_export_info_reads_the_header_without_a_passphrase(vault, tmp_path, monkeypatch):
    vault.save("me", small_prefix(), "pw")
    out = vault.export("me", tmp_path / "me.persona", "pw", "export-pw")
    monkeypatch.setattr(_crypto, "_argon2id", lambda *a: pytest.fail("KDF ran"))  # header only: no key derived
    info = vault_mod.export_info(out)
    assert (info.path, info.backbone, info.kdf) == (out, FP, FLOOR)
    assert info.file_bytes == out.stat().st_size > info.payload_bytes > 0 and info.format_version >= 1
    info.check_backbone(FP.upper())  # fingerprints compare as the vault does everywhere
    with pytest.raises(BackboneMismatchError) as exc:
        info.check_backbone(OTHER_FP)
    assert f"export file {out.name}" in str(exc.value) and FP[:16] in str(exc.value) and OTHER_FP[:16] in str(exc.value)
    with pytest.raises(UnsupportedFormatError, match="not a persona export file"):
        vault_mod.export_info(vault.path("me"))  # a profile is not an export
    with pytest.raises(VaultError, match="not found"):
        vault_mod.export_info(tmp_path / "missing.persona")


# --- crash safety and concurrency (real processes) --------------------------------------
CHILD = textwrap.dedent(r"""
    import sys
    import numpy as np
    from persona_sdk import _crypto
    from persona_sdk.errors import DecryptionError
    from persona_sdk.prefix import Prefix
    from persona_sdk.vault import Vault

    mode, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    v = Vault(kdf=_crypto.KdfParams.floor())
    fp = "ab" * 32

    def prefix(i):
        return Prefix(np.full((2, 2, 1, 4, 8), float(i % 5), np.float32), backbone=fp, method="v")

    if mode.startswith("stall-"):  # freeze at one point of the write, to be killed there
        import os, time
        _, point, mode = mode.split("-")
        real = getattr(os, point)

        def stall(*args):
            if point == "write":  # half the bytes reach the temp file first
                real(args[0], bytes(args[1])[: len(args[1]) // 2])
            print("stalled", flush=True)
            time.sleep(600)

        setattr(os, point, stall)

    cur = "pw"
    if mode == "rekey":
        try:
            v.load(name, "pw")
        except DecryptionError:
            cur = "pw2"
    print("ready", flush=True)
    i = 0
    while count == 0 or i < count:
        if mode == "save":
            v.save(name, prefix(i), "pw", force=True)
        elif mode == "both":
            v.save(name, prefix(i), "pw", force=True)
            v.save("shared", prefix(i), "pw", force=True)
        else:
            new = "pw2" if cur == "pw" else "pw"
            v.rekey(name, cur, new)
            cur = new
        i += 1
""")


def _child(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, env=env)


def _load_any(vault: Vault, name: str) -> Prefix:
    try:
        return vault.load(name, "pw")
    except DecryptionError:
        return vault.load(name, "pw2")


def test_sigkill_during_save_and_rekey_never_leaves_a_broken_profile(vault):
    rng = random.Random(4)
    vault.save("p", make_prefix(0.0), "pw")
    valid = {float(i) for i in range(5)}
    saw_tmp = 0
    for round_ in range(10):
        mode = "save" if round_ % 2 == 0 else "rekey"
        proc = _child([mode, "p", "0"])
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.35))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        saw_tmp += bool(tmp_files(vault.root))
        prefix = _load_any(vault, "p")  # readable, whole, one of the written values
        assert prefix.kv.shape == (2, 2, 1, 4, 8) and float(prefix.kv[0, 0, 0, 0, 0]) in valid
        assert len(np.unique(prefix.kv)) == 1
        assert tmp_files(vault.root) == []  # the load above cleaned up
    assert vault.list() == ["p"]


def test_two_processes_saving_at_once(vault):
    procs = [_child(["both", name, "6"]) for name in ("one", "two")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
        proc.stdout.close()
    assert vault.list() == ["one", "shared", "two"]
    for name in ("one", "two", "shared"):
        prefix = vault.load(name, "pw")
        # the 6th and last write of each process is prefix(5): all 5 % 5 = 0.0
        assert float(prefix.kv.flat[0]) == 0.0 and len(np.unique(prefix.kv)) == 1
    assert tmp_files(vault.root) == []


@pytest.mark.parametrize("op", ["save", "rekey"])
@pytest.mark.parametrize("point", ["write", "fsync", "replace"])
def test_sigkill_at_each_step_of_a_write(vault, op, point):
    """Deterministic companion of the random-kill loop: kill while half-written, before fsync,
    and just before the rename; the old profile stays whole and the leftover goes."""
    vault.save("p", make_prefix(3.0), "pw")
    before = vault.path("p").read_bytes()
    proc = _child([f"stall-{point}-{op}", "p", "0"])
    try:
        assert proc.stdout.readline() == b"ready\n"
        assert proc.stdout.readline() == b"stalled\n"
        assert tmp_files(vault.root), "the child should be inside a write"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert vault.path("p").read_bytes() == before
    assert float(vault.load("p", "pw").kv.flat[0]) == 3.0
    assert tmp_files(vault.root) == []


# --- hostile names, special files, export targets (attack run) ---------------------
@pytest.mark.parametrize("name", ["evil\n", "me\n", "CON", "nul", "Aux.backup", "com1", "LPT9", "conin$", "name.",
                                  "a."])
def test_names_that_break_listings_or_other_systems_are_refused(vault, name):
    with pytest.raises(ProfileNameError):
        vault.save(name, small_prefix(), "pw")
    assert not any(vault.root.iterdir()) or vault.list() == []


@pytest.mark.parametrize("name", ["console", "nulla", "com10", "lpt", "a.b", "x-1_y"])
def test_names_near_reserved_ones_are_fine(vault, name):
    vault.save(name, small_prefix(), "pw")
    assert vault.list() == [name]


def test_profile_name_derived_from_a_sender_is_always_valid():
    from persona_sdk.enrollment import profile_name_for
    from persona_sdk.vault import validate_name

    for sender in ("Con", "NUL", "a" * 70 + ".", "com1", "..", "Ana Lúcia", "\n", "x..y", "-.-"):
        validate_name(profile_name_for(sender))
    assert profile_name_for("Con") == "con-persona" and profile_name_for("Ana Lúcia") == "ana-l-cia"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_in_the_vault_does_not_hang_or_hold_the_lock(vault):
    vault.save("me", small_prefix(), "pw")
    os.mkfifo(vault.path("trap"))
    code = textwrap.dedent(f"""
        from persona_sdk._crypto import KdfParams
        from persona_sdk.errors import VaultError
        from persona_sdk.vault import Vault
        v = Vault({str(vault.root)!r}, kdf=KdfParams.floor(), lock_timeout=5)
        try:
            v.info("trap")
        except VaultError as exc:
            print("refused:", exc)
        print(v.list(), v.load("me", "pw").method)  # the lock was released
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused: profile 'trap' is not a regular file" in out.stdout
    assert "['me', 'trap'] m" in out.stdout  # listed (so `persona list` can mark it), and the vault still works


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_import_reads_only_regular_files(vault, tmp_path):
    fifo = tmp_path / "me.persona"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        from persona_sdk.errors import PersonaError
        from persona_sdk.vault import Vault
        for path in ({str(fifo)!r}, "/dev/zero"):
            try:
                Vault({str(vault.root)!r}).import_file(path, "pw", "pw")
            except PersonaError as exc:
                print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("UnsupportedFormatError") == 2 and "not a regular file" in out.stdout


def test_export_into_the_vault_folder_is_refused(vault, tmp_path):
    vault.save("me", small_prefix(), "pw")
    before = vault.path("me").read_bytes()
    link = tmp_path / "link-to-vault"
    link.symlink_to(vault.root)
    for target in (vault.root / "me.persona", vault.root / "other.persona", vault.root / "sub" / "x.persona",
                   link / "me.persona"):
        with pytest.raises(VaultError, match="vault folder"):
            vault.export("me", target, "pw", "export-pw", force=True)
    assert vault.path("me").read_bytes() == before and vault.list() == ["me"]
    assert vault.export("me", tmp_path / "me.persona", "pw", "export-pw").exists()


def test_a_killed_exports_temp_file_is_removed_by_the_next_export(vault, tmp_path):
    """A writer holds a lock on its temp file: the next export removes only a dead writer's."""
    vault.save("me", small_prefix(), "pw")
    out = tmp_path / "me.persona"
    writer = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from persona_sdk.fileio import atomic_write
        def stall(tmp):
            print("writing", flush=True)
            time.sleep(120)
        atomic_write(Path({str(out)!r}), b"x" * 100, verify=stall)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        [live] = tmp_files(tmp_path)
        vault.export("me", tmp_path / "other.persona", "pw", "export-pw")
        vault.export("me", out, "pw", "export-pw", force=True)  # a live writer's temp file stays
        assert (tmp_path / live).exists()
    finally:
        proc.kill()
        proc.wait(10)
    assert tmp_files(tmp_path) == [live]  # SIGKILL: left behind
    vault.export("me", out, "pw", "export-pw", force=True)
    assert tmp_files(tmp_path) == []
    assert vault.import_file(out, "export-pw", "pw", name="back") == "back"
