"""The persona file format (persona_sdk._crypto): round trips, structure checks before
any key derivation, KDF floor / cap, key commitment, and an independent decoder
written from FORMAT.md so the document and the code cannot drift apart."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persona_sdk import _crypto as c
from persona_sdk.errors import (
    DecryptionError,
    KdfParameterError,
    PassphraseRequiredError,
    PersonaFileError,
    UnsupportedFormatError,
    VaultError,
)

FP = "0123456789abcdef" * 4
FLOOR = c.KdfParams.floor()
PAYLOAD = b"not chat text, just bytes \x00\x01\x02" * 3


@pytest.fixture
def kdf_calls(monkeypatch):
    """Counts Argon2id runs (to prove hostile files are refused before the KDF)."""
    calls = []
    real = c._argon2id

    def counting(passphrase, salt, kdf):
        calls.append(kdf)
        return real(passphrase, salt, kdf)

    monkeypatch.setattr(c, "_argon2id", counting)
    return calls


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return c.seal(PAYLOAD, kind=c.KIND_PROFILE, fingerprint=FP, context=b"profile:me",
                  passphrase="pw", kdf=FLOOR)


def _open(data: bytes, passphrase="pw", context=b"profile:me", kind=c.KIND_PROFILE) -> bytes:
    header = c.read_header(data, kind=kind)
    return c.unseal(data, header, c.derive_kek(header, passphrase=passphrase), context=context)


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    raw = bytearray(data)
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


def test_round_trip_passphrase(sealed):
    assert len(sealed) == c.HEADER_LEN + len(PAYLOAD) + c.TAG_LEN
    assert _open(sealed) == PAYLOAD
    header = c.read_header(sealed)
    assert header.mode == "passphrase" and header.kdf == FLOOR and header.fingerprint == FP


def test_round_trip_keyring_and_wrong_secret():
    key_id, secret = c.new_keyring_key()
    data = c.seal(PAYLOAD, kind=c.KIND_EXPORT, fingerprint=FP, keyring=(key_id, secret))
    header = c.read_header(data, kind=c.KIND_EXPORT)
    assert header.mode == "keyring" and header.key_id == key_id and header.kdf is None
    assert c.unseal(data, header, c.derive_kek(header, keyring_secret=secret)) == PAYLOAD
    _, other = c.new_keyring_key()
    with pytest.raises(DecryptionError):
        c.unseal(data, header, c.derive_kek(header, keyring_secret=other))


def test_fresh_salt_nonces_and_file_key_every_time():
    a = c.seal(PAYLOAD, kind=1, fingerprint=FP, passphrase="pw", kdf=FLOOR)
    b = c.seal(PAYLOAD, kind=1, fingerprint=FP, passphrase="pw", kdf=FLOOR)
    ha, hb = c.read_header(a), c.read_header(b)
    assert ha.salt != hb.salt and ha.nonce != hb.nonce and ha.wrap_nonce != hb.wrap_nonce
    assert ha.commitment != hb.commitment and a[c.HEADER_LEN:] != b[c.HEADER_LEN:]


def test_wrong_passphrase_and_wrong_context(sealed):
    with pytest.raises(DecryptionError) as one:
        _open(sealed, passphrase="pW")
    with pytest.raises(DecryptionError) as two:
        _open(sealed, context=b"profile:someone-else")
    assert str(one.value) == str(two.value)
    assert "wrong passphrase" in str(one.value)


def test_passphrase_is_unicode_normalised():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    data = c.seal(PAYLOAD, kind=1, fingerprint=FP, passphrase=composed, kdf=FLOOR)
    assert _open(data, passphrase=decomposed, context=b"") == PAYLOAD


def test_empty_or_missing_passphrase_refused(sealed):
    with pytest.raises(PassphraseRequiredError):
        c.seal(PAYLOAD, kind=1, fingerprint=FP, passphrase="", kdf=FLOOR)
    with pytest.raises(PassphraseRequiredError):
        c.derive_kek(c.read_header(sealed), passphrase=None)


def test_seal_needs_a_real_fingerprint():
    with pytest.raises(VaultError, match="fingerprint"):
        c.seal(PAYLOAD, kind=1, fingerprint="tiny", passphrase="pw", kdf=FLOOR)


@pytest.mark.parametrize("kwargs", [
    dict(memory_kib=c.FLOOR_MEMORY_KIB - 1, iterations=2, lanes=1),
    dict(memory_kib=c.FLOOR_MEMORY_KIB, iterations=1, lanes=1),
    dict(memory_kib=c.CAP_MEMORY_KIB + 1, iterations=2, lanes=1),
    dict(memory_kib=65536, iterations=c.CAP_ITERATIONS + 1, lanes=1),
    dict(memory_kib=65536, iterations=3, lanes=0),
    dict(memory_kib=65536, iterations=3, lanes=c.CAP_LANES + 1),
    dict(memory_kib=c.CAP_MEMORY_KIB, iterations=5, lanes=4),  # over the work cap
    dict(memory_kib=65536.0, iterations=3, lanes=4),
])
def test_kdf_params_config_rejects_out_of_bounds(kwargs):
    with pytest.raises(KdfParameterError, match=r"allowed|int"):
        c.KdfParams(**kwargs)


def test_kdf_defaults():
    d = c.KdfParams()
    assert (d.memory_kib, d.iterations, d.lanes) == (64 * 1024, 3, 4)
    assert (FLOOR.memory_kib, FLOOR.iterations, FLOOR.lanes) == (19 * 1024, 2, 1)


@pytest.mark.parametrize("m,t,p", [
    (c.FLOOR_MEMORY_KIB - 1, 2, 1), (8, 1, 1), (c.FLOOR_MEMORY_KIB, 1, 1), (0, 0, 0),
    (c.CAP_MEMORY_KIB * 4, 2, 1), (65536, 1000, 1), (65536, 3, 255), (2**32 - 1, 2**32 - 1, 2**32 - 1),
])
def test_kdf_params_in_file_outside_floor_or_cap_rejected_before_kdf(sealed, kdf_calls, m, t, p):
    raw = _set(_set(_set(sealed, 16, ">I", m), 20, ">I", t), 24, ">I", p)
    with pytest.raises(KdfParameterError, match="refusing"):
        c.read_header(raw)
    assert kdf_calls == []


@pytest.mark.parametrize("version", [0, 2, 255, 65535])
def test_version_downgrade_and_upgrade_rejected(sealed, kdf_calls, version):
    with pytest.raises(UnsupportedFormatError, match=f"version {version} is not supported"):
        c.read_header(_set(sealed, 8, ">H", version))
    assert kdf_calls == []


def test_declared_length_2_64_minus_1_rejected_before_work(sealed, kdf_calls):
    raw = _set(sealed, c.OFF_LENGTH, ">Q", 2**64 - 1)
    with pytest.raises(UnsupportedFormatError, match="implausible payload length"):
        c.read_header(raw)
    with pytest.raises(UnsupportedFormatError, match="truncated"):
        c.read_header(_set(sealed, c.OFF_LENGTH, ">Q", len(PAYLOAD) + 1))
    assert kdf_calls == []


def test_truncation_at_every_length_and_trailing_garbage(sealed, kdf_calls):
    for n in range(len(sealed)):
        with pytest.raises(UnsupportedFormatError):
            c.read_header(sealed[:n])
    for extra in (b"\x00", b"garbage" * 100):
        with pytest.raises(UnsupportedFormatError, match="trailing"):
            c.read_header(sealed + extra)
    assert kdf_calls == []


def test_structure_checks(sealed):
    cases = {
        "not a persona file": b"PK\x03\x04" + sealed[4:],
        "unknown persona file kind": _set(sealed, 10, ">B", 9),
        "cipher suite": _set(sealed, 11, ">B", 2),
        "key-derivation id": _set(sealed, 12, ">B", 7),
        "reserved": _set(sealed, 13, ">B", 1),
        "carries key-derivation parameters": _set(sealed, 12, ">B", c.KDF_KEYRING),
    }
    for message, raw in cases.items():
        with pytest.raises(UnsupportedFormatError, match=message):
            c.read_header(raw)
    with pytest.raises(UnsupportedFormatError, match="not a persona export file"):
        c.read_header(sealed, kind=c.KIND_EXPORT)
    with pytest.raises(UnsupportedFormatError):
        c.read_header(b"")


def test_spliced_body_from_another_file_under_same_passphrase(sealed):
    other = c.seal(PAYLOAD, kind=1, fingerprint=FP, context=b"profile:me", passphrase="pw", kdf=FLOOR)
    with pytest.raises(DecryptionError):
        _open(sealed[: c.HEADER_LEN] + other[c.HEADER_LEN:])
    with pytest.raises(DecryptionError):  # header halves swapped too
        _open(other[: c.OFF_WRAPPED] + sealed[c.OFF_WRAPPED:])


def test_commitment_is_checked_before_the_body(sealed, monkeypatch):
    """A bad commitment fails without ever attempting the body decryption."""
    raw = bytearray(sealed)
    raw[c.OFF_COMMIT] ^= 1
    decrypts = []
    real = AESGCM.decrypt

    def spy(self, nonce, data, aad):
        decrypts.append(len(data))
        return real(self, nonce, data, aad)

    monkeypatch.setattr(AESGCM, "decrypt", spy)
    with pytest.raises(DecryptionError):
        _open(bytes(raw))
    assert decrypts == [c.WRAPPED_LEN]  # only the key unwrap ran


def test_every_failure_is_a_persona_file_error(sealed):
    for cls in (DecryptionError, UnsupportedFormatError, KdfParameterError):
        assert issubclass(cls, PersonaFileError)
    assert all(line.strip() for line in (DecryptionError.__doc__, UnsupportedFormatError.__doc__))


def _decode_from_format_md(data: bytes, passphrase: str, context: bytes) -> bytes:
    """An independent reader written from FORMAT.md alone."""
    assert data[:8] == b"PERSONA\x00"
    version, kind, suite, kdf_id = struct.unpack(">HBBB", data[8:13])
    assert (version, suite, kdf_id) == (1, 1, 1) and data[13:16] == b"\0\0\0"
    m, t, p = struct.unpack(">III", data[16:28])
    salt, wrap_nonce, nonce = data[28:44], data[44:56], data[56:68]
    (length,) = struct.unpack(">Q", data[100:108])
    assert len(data) == 188 + length + 16
    kek = hash_secret_raw(passphrase.encode(), salt, t, m, p, 32, Type.ID)
    file_key = AESGCM(kek).decrypt(wrap_nonce, data[108:156], data[:108])
    keys = HKDF(hashes.SHA256(), 64, None, b"persona/v1 file keys").derive(file_key)
    assert hmac.compare_digest(hmac.new(keys[32:], data[:156], hashlib.sha256).digest(), data[156:188])
    return AESGCM(keys[:32]).decrypt(nonce, data[188:], data[:188] + context)


def test_format_md_describes_the_real_bytes(sealed):
    assert _decode_from_format_md(sealed, "pw", b"profile:me") == PAYLOAD
    assert c.read_header(sealed).fingerprint == sealed[68:100].hex() == FP
