"""The hazmat layer of the vault: the persona file format, byte by byte.

Callers never choose nonces, salts or algorithms: they hand in a payload, a
kind (profile or export), a backbone fingerprint, a context string and either
a passphrase or a keyring secret, and get bytes back; or they hand in bytes
and get the payload back or one of a few clean errors. ``FORMAT.md`` at the
repository root describes the layout; the constants below are the truth.

Sealing::

    file_key            = 32 random bytes (fresh per file)
    KEK                 = Argon2id(passphrase, salt, m, t, p)      (passphrase mode)
                        = HKDF-SHA256(keyring secret, salt=key id)  (keyring mode)
    wrapped_key         = AES-256-GCM(KEK, wrap_nonce, file_key, aad=header[0:108])
    enc_key, commit_key = HKDF-SHA256(file_key, info="persona/v1 file keys") -> 32 + 32 bytes
    commitment          = HMAC-SHA256(commit_key, header[0:156])
    body                = AES-256-GCM(enc_key, nonce, payload, aad=header[0:188] + context)

Opening checks the structure, lengths and KDF floor / cap before any key
derivation, then unwraps, checks the key commitment in constant time, and
only then decrypts the body. AES-GCM is not key-committing; the commitment
is what makes "this ciphertext opens under exactly one key" true.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import (
    DecryptionError,
    KdfParameterError,
    PassphraseRequiredError,
    UnsupportedFormatError,
    VaultError,
)

MAGIC = b"PERSONA\x00"
VERSION = 1
KIND_PROFILE = 1
KIND_EXPORT = 2
KINDS = {KIND_PROFILE: "profile", KIND_EXPORT: "export file"}
SUITE_AES256GCM_HKDF_SHA256 = 1
KDF_ARGON2ID = 1
KDF_KEYRING = 2

SALT_LEN = 16
NONCE_LEN = 12
KEY_LEN = 32
TAG_LEN = 16
FINGERPRINT_LEN = 32  # sha256 digest, shown as 64 hex characters
WRAPPED_LEN = KEY_LEN + TAG_LEN
COMMIT_LEN = 32
MAX_PAYLOAD = 256 * 1024 * 1024  # a KV prefix is ~1 MB; 256 MiB is far beyond any real one

# header layout: (name, offset, struct format or length)
_FIXED = struct.Struct(">8sHBBB3sIII")  # magic, version, kind, suite, kdf id, reserved, m, t, p
OFF_SALT = 28
OFF_WRAP_NONCE = OFF_SALT + SALT_LEN  # 44
OFF_NONCE = OFF_WRAP_NONCE + NONCE_LEN  # 56
OFF_FINGERPRINT = OFF_NONCE + NONCE_LEN  # 68
OFF_LENGTH = OFF_FINGERPRINT + FINGERPRINT_LEN  # 100
OFF_WRAPPED = OFF_LENGTH + 8  # 108
OFF_COMMIT = OFF_WRAPPED + WRAPPED_LEN  # 156
HEADER_LEN = OFF_COMMIT + COMMIT_LEN  # 188
MAX_FILE = HEADER_LEN + MAX_PAYLOAD + TAG_LEN
assert _FIXED.size == OFF_SALT

# Argon2id bounds, checked on write (config) and on read (every file is hostile)
FLOOR_MEMORY_KIB = 19 * 1024  # OWASP minimum: 19 MiB, 2 iterations, 1 lane
FLOOR_ITERATIONS = 2
CAP_MEMORY_KIB = 1024 * 1024  # 1 GiB
CAP_ITERATIONS = 10
CAP_LANES = 16
CAP_WORK_KIB = 4 * 1024 * 1024  # memory x iterations <= 4 GiB-passes: what a hostile file may demand

_INFO_FILE_KEYS = b"persona/v1 file keys"
_INFO_KEYRING_KEK = b"persona/v1 keyring kek"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost: memory in KiB, iterations (time cost), lanes (parallelism).

    The default follows RFC 9106's second recommendation (64 MiB, 3 passes,
    4 lanes). ``KdfParams.floor()`` is the weakest setting persona accepts
    anywhere, on write and on read (OWASP's minimum); tests use exactly it.
    """

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def __post_init__(self) -> None:
        for name in ("memory_kib", "iterations", "lanes"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise KdfParameterError(f"Argon2id {name} must be an int")
        if not FLOOR_MEMORY_KIB <= self.memory_kib <= CAP_MEMORY_KIB:
            raise KdfParameterError(
                f"Argon2id memory {self.memory_kib} KiB is outside the allowed "
                f"{FLOOR_MEMORY_KIB}..{CAP_MEMORY_KIB} KiB"
            )
        if not FLOOR_ITERATIONS <= self.iterations <= CAP_ITERATIONS:
            raise KdfParameterError(
                f"Argon2id iterations {self.iterations} is outside the allowed "
                f"{FLOOR_ITERATIONS}..{CAP_ITERATIONS}"
            )
        if not 1 <= self.lanes <= CAP_LANES:
            raise KdfParameterError(f"Argon2id lanes {self.lanes} is outside the allowed 1..{CAP_LANES}")
        if self.memory_kib * self.iterations > CAP_WORK_KIB:
            raise KdfParameterError(
                f"Argon2id memory x iterations ({self.memory_kib} KiB x {self.iterations}) exceeds "
                f"the allowed {CAP_WORK_KIB} KiB-passes"
            )
        if self.memory_kib < 8 * self.lanes:
            raise KdfParameterError("Argon2id memory must be at least 8 KiB per lane")

    @classmethod
    def floor(cls) -> "KdfParams":
        return cls(FLOOR_MEMORY_KIB, FLOOR_ITERATIONS, 1)


@dataclass(frozen=True)
class Header:
    """The parsed, structurally valid header of a persona file (not yet authenticated)."""

    kind: int
    kdf_id: int
    kdf: KdfParams | None  # None in keyring mode
    salt: bytes  # Argon2id salt, or the keyring entry id in keyring mode
    wrap_nonce: bytes
    nonce: bytes
    fingerprint: str  # hex
    payload_len: int
    wrapped_key: bytes
    commitment: bytes
    version: int = VERSION
    suite: int = SUITE_AES256GCM_HKDF_SHA256

    @property
    def mode(self) -> str:
        return "keyring" if self.kdf_id == KDF_KEYRING else "passphrase"

    @property
    def key_id(self) -> str:
        """Name of the keyring entry (keyring mode)."""
        return self.salt.hex()

    def to_bytes(self) -> bytes:
        m, t, p = (self.kdf.memory_kib, self.kdf.iterations, self.kdf.lanes) if self.kdf else (0, 0, 0)
        raw = _FIXED.pack(MAGIC, self.version, self.kind, self.suite, self.kdf_id, b"\0\0\0", m, t, p)
        raw += self.salt + self.wrap_nonce + self.nonce + bytes.fromhex(self.fingerprint)
        raw += struct.pack(">Q", self.payload_len) + self.wrapped_key + self.commitment
        assert len(raw) == HEADER_LEN
        return raw


def check_fingerprint(fingerprint: str) -> str:
    """A backbone fingerprint is a sha256 hex digest (``backbone.fingerprint``)."""
    fp = str(fingerprint).lower()
    if len(fp) != 2 * FINGERPRINT_LEN or any(c not in "0123456789abcdef" for c in fp):
        raise VaultError("the persona has no valid backbone fingerprint (expected 64 hex characters)")
    return fp


def new_keyring_key() -> tuple[str, bytes]:
    """A fresh (key id, secret) pair for keyring mode; the id names the keyring entry."""
    return os.urandom(SALT_LEN).hex(), os.urandom(KEY_LEN)


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise PassphraseRequiredError("a passphrase must be a non-empty string")
    # NFC so the same passphrase typed on another OS / keyboard gives the same key
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _argon2id(passphrase: str, salt: bytes, kdf: KdfParams) -> bytes:
    from argon2.low_level import Type, hash_secret_raw

    return hash_secret_raw(
        _passphrase_bytes(passphrase), salt, time_cost=kdf.iterations, memory_cost=kdf.memory_kib,
        parallelism=kdf.lanes, hash_len=KEY_LEN, type=Type.ID, version=19,
    )


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_kek(header: Header, *, passphrase: str | None = None, keyring_secret: bytes | None = None) -> bytes:
    """The key-encryption key for ``header`` (runs Argon2id in passphrase mode)."""
    if header.kdf_id == KDF_ARGON2ID:
        if passphrase is None:
            raise PassphraseRequiredError("this file is protected by a passphrase; none was given")
        assert header.kdf is not None
        return _argon2id(passphrase, header.salt, header.kdf)
    if keyring_secret is None or len(keyring_secret) != KEY_LEN:
        raise DecryptionError("cannot decrypt: wrong passphrase or key, or the file was modified")
    return _hkdf(keyring_secret, header.salt, _INFO_KEYRING_KEK, KEY_LEN)


def _file_keys(file_key: bytes) -> tuple[bytes, bytes]:
    both = _hkdf(file_key, None, _INFO_FILE_KEYS, 2 * KEY_LEN)
    return both[:KEY_LEN], both[KEY_LEN:]


def seal(
    payload: bytes,
    *,
    kind: int,
    fingerprint: str,
    context: bytes = b"",
    passphrase: str | None = None,
    kdf: KdfParams | None = None,
    keyring: tuple[str, bytes] | None = None,
) -> bytes:
    """Encrypt ``payload`` into a complete persona file (header + body).

    Exactly one of ``passphrase`` (Argon2id with ``kdf``, default params) or
    ``keyring`` (``new_keyring_key()``) chooses the key-encryption key.
    ``context`` is bound as associated data but not stored (e.g. the profile
    name), so the file only opens under the same context.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    if (passphrase is None) == (keyring is None):
        raise ValueError("give exactly one of passphrase or keyring")
    if len(payload) > MAX_PAYLOAD:
        raise UnsupportedFormatError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    fp = check_fingerprint(fingerprint)
    if passphrase is not None:
        kdf = kdf or KdfParams()
        kdf_id, salt = KDF_ARGON2ID, os.urandom(SALT_LEN)
    else:
        assert keyring is not None
        kdf, kdf_id, salt = None, KDF_KEYRING, bytes.fromhex(keyring[0])
        if len(salt) != SALT_LEN or len(keyring[1]) != KEY_LEN:
            raise ValueError("keyring key id / secret have the wrong length")
    header = Header(
        kind=kind, kdf_id=kdf_id, kdf=kdf, salt=salt, wrap_nonce=os.urandom(NONCE_LEN),
        nonce=os.urandom(NONCE_LEN), fingerprint=fp, payload_len=len(payload),
        wrapped_key=b"\0" * WRAPPED_LEN, commitment=b"\0" * COMMIT_LEN,
    )
    kek = derive_kek(header, passphrase=passphrase, keyring_secret=keyring[1] if keyring else None)
    file_key = os.urandom(KEY_LEN)
    raw = header.to_bytes()
    wrapped = AESGCM(kek).encrypt(header.wrap_nonce, file_key, raw[:OFF_WRAPPED])
    raw = raw[:OFF_WRAPPED] + wrapped
    enc_key, commit_key = _file_keys(file_key)
    raw += hmac.new(commit_key, raw, hashlib.sha256).digest()
    body = AESGCM(enc_key).encrypt(header.nonce, payload, raw + context)
    return raw + body


def read_header(data: bytes, *, kind: int | None = None) -> Header:
    """Parse and structurally check a whole persona file. Cheap: no key derivation.

    Raises :class:`UnsupportedFormatError` (not a persona file, wrong version,
    kind, suite, reserved bits, lengths) or :class:`KdfParameterError`.
    """
    if len(data) < HEADER_LEN or data[:8] != MAGIC:
        if data[: min(len(data), 8)] == MAGIC[: min(len(data), 8)] and len(data) > 0:
            raise UnsupportedFormatError("the file is truncated (shorter than a persona header)")
        raise UnsupportedFormatError("not a persona file")
    _, version, file_kind, suite, kdf_id, reserved, m, t, p = _FIXED.unpack_from(data, 0)
    if version != VERSION:
        raise UnsupportedFormatError(
            f"persona file format version {version} is not supported (this persona reads version {VERSION})"
        )
    if file_kind not in KINDS:
        raise UnsupportedFormatError(f"unknown persona file kind {file_kind}")
    if kind is not None and file_kind != kind:
        raise UnsupportedFormatError(f"this is a persona {KINDS[file_kind]}, not a persona {KINDS[kind]}")
    if suite != SUITE_AES256GCM_HKDF_SHA256:
        raise UnsupportedFormatError(f"unknown cipher suite {suite}")
    if reserved != b"\0\0\0":
        raise UnsupportedFormatError("reserved header bytes are not zero")
    if kdf_id == KDF_ARGON2ID:
        try:
            kdf: KdfParams | None = KdfParams(m, t, p)
        except KdfParameterError as exc:
            raise KdfParameterError(f"refusing the file's key-derivation parameters: {exc}") from None
    elif kdf_id == KDF_KEYRING:
        if (m, t, p) != (0, 0, 0):
            raise UnsupportedFormatError("keyring-mode file carries key-derivation parameters")
        kdf = None
    else:
        raise UnsupportedFormatError(f"unknown key-derivation id {kdf_id}")
    (payload_len,) = struct.unpack_from(">Q", data, OFF_LENGTH)
    if payload_len > MAX_PAYLOAD:
        raise UnsupportedFormatError(f"the file declares an implausible payload length ({payload_len} bytes)")
    expected = HEADER_LEN + payload_len + TAG_LEN
    if len(data) < expected:
        raise UnsupportedFormatError("the file is truncated")
    if len(data) > expected:
        raise UnsupportedFormatError("the file has trailing data after the encrypted payload")
    return Header(
        kind=file_kind, kdf_id=kdf_id, kdf=kdf,
        salt=bytes(data[OFF_SALT:OFF_WRAP_NONCE]),
        wrap_nonce=bytes(data[OFF_WRAP_NONCE:OFF_NONCE]),
        nonce=bytes(data[OFF_NONCE:OFF_FINGERPRINT]),
        fingerprint=bytes(data[OFF_FINGERPRINT:OFF_LENGTH]).hex(),
        payload_len=payload_len,
        wrapped_key=bytes(data[OFF_WRAPPED:OFF_COMMIT]),
        commitment=bytes(data[OFF_COMMIT:HEADER_LEN]),
        version=version, suite=suite,
    )


def unseal(data: bytes, header: Header, kek: bytes, *, context: bytes = b"", what: str = "the file") -> bytes:
    """Unwrap, check the key commitment, then decrypt. One error for every failure."""
    failure = DecryptionError(f"cannot decrypt {what}: wrong passphrase or key, or the file was modified")
    raw = bytes(data[:HEADER_LEN])
    try:
        file_key = AESGCM(kek).decrypt(header.wrap_nonce, header.wrapped_key, raw[:OFF_WRAPPED])
    except (InvalidTag, ValueError):
        raise failure from None
    enc_key, commit_key = _file_keys(file_key)
    expected = hmac.new(commit_key, raw[:OFF_COMMIT], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, header.commitment):
        raise failure
    try:
        payload = AESGCM(enc_key).decrypt(header.nonce, bytes(data[HEADER_LEN:]), raw + context)
    except (InvalidTag, ValueError):
        raise failure from None
    if len(payload) != header.payload_len:  # authenticated, so only a writer bug gets here
        raise failure
    return payload
