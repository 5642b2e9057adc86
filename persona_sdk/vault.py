"""The vault: personas encrypted at rest as named profiles, plus encrypted export / import.

A profile is one file ``<root>/<name>.persona`` (root = ``paths.data_dir()``,
0700; files 0600). Its payload is ``Prefix.to_bytes()`` (safetensors: the KV
block, the backbone fingerprint, the training method and summary numbers; no
chat text exists in a prefix), sealed by :mod:`persona_sdk._crypto` and bound
to the profile name. Decrypted bytes live in memory only.

Keys: a passphrase (Argon2id) or a random key in the OS keyring
(:mod:`persona_sdk.oskeyring`).
``passphrase=None`` means: ``$PERSONA_PASSPHRASE`` if set, else the keyring
(when saving) / what the file says (when loading); with no keyring backend
the vault raises :class:`PassphraseRequiredError` and the caller asks for a
passphrase. There is never a plaintext key file.

Writes: :func:`persona_sdk.fileio.atomic_write` (a 0600 temp file in the same
folder, fsync, ``os.replace``, fsync of the folder), all under an inter-process
lock (``fcntl.flock`` on ``<root>/.lock``); leftover temp files of a crashed
writer are removed by the next operation. ``rekey`` reads back and decrypts the new file before it
replaces the old one.

Example::

    vault = Vault()
    vault.save("me", prefix, passphrase="correct horse")
    prefix = vault.load("me", passphrase="correct horse", fingerprint=backbone.fingerprint(path))
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import _crypto, oskeyring, paths
from ._crypto import KIND_EXPORT, KIND_PROFILE, Header, KdfParams
from .errors import (
    BackboneMismatchError,
    KeyringUnavailableError,
    PassphraseRequiredError,
    PersonaWarning,
    PrefixShapeError,
    ProfileExistsError,
    ProfileNameError,
    ProfileNotFoundError,
    UnsupportedFormatError,
    VaultError,
)
from .fileio import TMP_MARK, atomic_write, fsync_dir, lock, remove_stale_temps, unlock
from .oskeyring import SERVICE as KEYRING_SERVICE
from .oskeyring import available as keyring_available
from .prefix import Prefix, PrefixSpec

__all__ = ["ENV_PASSPHRASE", "ENV_EXPORT_PASSPHRASE", "SUFFIX", "KEYRING", "KEYRING_SERVICE", "LOCK_FILE",
           "Vault", "ProfileInfo", "ExportInfo", "VaultPermissionWarning", "export_info", "validate_name",
           "needs_passphrase", "keyring_available"]

ENV_PASSPHRASE = "PERSONA_PASSPHRASE"
ENV_EXPORT_PASSPHRASE = "PERSONA_EXPORT_PASSPHRASE"
SUFFIX = ".persona"
LOCK_FILE = ".lock"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # always fullmatch: "$" would accept a trailing newline
# Device names Windows reserves in any folder, with any extension ("con.persona"):
# profiles travel between systems in export files, so these are refused everywhere.
_RESERVED = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
                      + [f"{dev}{i}" for dev in ("COM", "LPT") for i in range(1, 10)])


class _UseKeyring:
    def __repr__(self) -> str:
        return "KEYRING"


KEYRING: Any = _UseKeyring()
"""Pass as the passphrase to keep the profile's key in the OS keyring."""


class VaultPermissionWarning(PersonaWarning):
    """A vault folder or file had looser permissions than 0700 / 0600 and was fixed."""


@dataclass(frozen=True)
class ProfileInfo:
    """What can be shown about a profile without decrypting it."""

    name: str
    path: Path
    mode: str  # "passphrase" or "keyring"
    kdf: KdfParams | None  # Argon2id parameters (passphrase mode)
    backbone: str  # fingerprint (hex) of the backbone the persona was made for
    payload_bytes: int
    file_bytes: int
    modified: float  # POSIX timestamp
    format_version: int


@dataclass(frozen=True)
class ExportInfo:
    """What can be shown about an export file without its passphrase (structure already checked)."""

    path: Path
    kdf: KdfParams | None  # Argon2id parameters of the export passphrase
    backbone: str  # fingerprint (hex) of the backbone the persona was made for
    payload_bytes: int
    file_bytes: int
    format_version: int

    def check_backbone(self, fingerprint: str) -> None:
        """Refuse (:class:`BackboneMismatchError`) a backbone other than the one the export was made for."""
        _check_fingerprint(self.backbone, fingerprint, f"export file {self.path.name}")


def export_info(path: Path | str) -> ExportInfo:
    """Header facts of an export file: no passphrase needed. The file is treated as hostile: a
    regular file only, size-bounded, its structure and KDF bounds checked, passphrase-protected."""
    src = Path(path).expanduser()
    data, header = _read_export(src)
    return ExportInfo(path=src, kdf=header.kdf, backbone=header.fingerprint, payload_bytes=header.payload_len,
                      file_bytes=len(data), format_version=header.version)


def _read_export(src: Path) -> tuple[bytes, Header]:
    data = _read_bounded(src)
    header = _crypto.read_header(data, kind=KIND_EXPORT)
    if header.mode != "passphrase":
        raise UnsupportedFormatError(f"export file {src.name} is not passphrase-protected")
    return data, header


def _valid_name(name: object) -> bool:
    return (isinstance(name, str) and _NAME.fullmatch(name) is not None and not name.endswith((SUFFIX, "."))
            and ".." not in name and name.split(".", 1)[0].upper() not in _RESERVED)


def validate_name(name: str) -> str:
    """A profile name: 1-64 of letters, digits, '.', '_', '-'; starts with a letter or digit,
    does not end with '.', and is not a device name Windows reserves (CON, NUL, COM1, ...)."""
    if not _valid_name(name):
        raise ProfileNameError(
            "a profile name is 1-64 characters: letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no path separators, no '..', no trailing '.' or '.persona', not a "
            "reserved device name such as CON or NUL)"
        )
    return name


class Vault:
    """Named, encrypted persona profiles under one folder.

    ``kdf`` sets the Argon2id cost of files this vault *writes* (default
    64 MiB / 3 passes / 4 lanes); it can never go below ``KdfParams.floor()``,
    and files claiming weaker (or absurdly strong) parameters are refused on read.
    """

    def __init__(self, root: Path | str | None = None, *, kdf: KdfParams | None = None,
                 lock_timeout: float = 60.0) -> None:
        self.root = Path(root).expanduser() if root is not None else paths.data_dir()
        self.kdf = kdf if kdf is not None else KdfParams()
        if not isinstance(self.kdf, KdfParams):
            raise VaultError("kdf must be a KdfParams")
        self.lock_timeout = float(lock_timeout)
        self._ensure_root()

    # --- public API ---------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.root / (validate_name(name) + SUFFIX)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def list(self) -> list[str]:
        """Profile names, sorted: every ``NAME.persona`` entry with a valid name, readable or
        not (a truncated file, a symlink, a FIFO...: :meth:`info` says what is wrong with it)."""
        with self._locked():
            pass  # cleans leftovers
        names = []
        for p in self.root.iterdir():
            if p.name.endswith(SUFFIX) and not p.name.startswith("."):
                stem = p.name[: -len(SUFFIX)]
                if _valid_name(stem):
                    names.append(stem)
        return sorted(names)

    def info(self, name: str) -> ProfileInfo:
        """Header facts (mode, KDF cost, backbone, sizes): no passphrase needed."""
        path = self.path(name)
        with self._locked():
            data, st = self._read(path, name)
        header = _crypto.read_header(data, kind=KIND_PROFILE)
        return ProfileInfo(
            name=name, path=path, mode=header.mode, kdf=header.kdf, backbone=header.fingerprint,
            payload_bytes=header.payload_len, file_bytes=len(data), modified=st.st_mtime,
            format_version=header.version,
        )

    def save(self, name: str, prefix: Prefix, passphrase: str | None = None, *, force: bool = False) -> Path:
        """Encrypt ``prefix`` as profile ``name``; refuses to replace one unless ``force``."""
        if not isinstance(prefix, Prefix):
            raise VaultError("save() needs a Prefix")
        return self._save_payload(name, prefix.to_bytes(), prefix.backbone, passphrase, force)

    def load(self, name: str, passphrase: str | None = None, *, expect: Any = None,
             fingerprint: str | None = None) -> Prefix:
        """Decrypt profile ``name`` into memory.

        ``fingerprint``: the backbone in use; a persona made for another one is
        refused before any key derivation. ``expect``: a ``BackboneSpec`` (layers,
        KV heads, head dim must match) or a ``PrefixSpec`` (also length and dtype).
        """
        payload, header = self._load_payload(name, passphrase, fingerprint)
        return _to_prefix(payload, header, expect)

    def delete(self, name: str) -> None:
        """Remove profile ``name`` (and its keyring entry, in keyring mode)."""
        path = self.path(name)
        with self._locked():
            old = self._header_if_any(path, name)
            if not os.path.lexists(path):
                raise ProfileNotFoundError(f"no profile named {name!r}")
            path.unlink()
            fsync_dir(self.root)
        if old is not None and old.mode == "keyring":
            oskeyring.delete(old.key_id)

    def rekey(self, name: str, old: str | None, new: str | None) -> None:
        """Re-encrypt profile ``name`` under a new passphrase (or ``KEYRING``).

        ``old`` unlocks the current file (None: ``$PERSONA_PASSPHRASE`` or the
        keyring, as the file says). ``new``: a passphrase, or ``KEYRING`` / None
        for the OS keyring. The new file is written, read back and decrypted
        before it replaces the old one.
        """
        path = self.path(name)
        with self._locked():
            data, _ = self._read(path, name)
            header = _crypto.read_header(data, kind=KIND_PROFILE)
            payload = self._unseal(data, header, old, name, ENV_PASSPHRASE, f"profile {name!r}")
            prefix = _to_prefix(payload, header, None)
            blob, key_id = self._seal_profile(name, payload, prefix.backbone,
                                              KEYRING if new is None else new, env=None)

            def verify(tmp: Path) -> None:
                written = _read_bounded(tmp)
                h = _crypto.read_header(written, kind=KIND_PROFILE)
                if self._unseal(written, h, new, name, None, f"profile {name!r}") != payload:
                    raise VaultError("the re-encrypted profile did not verify; the old one is kept")

            try:
                atomic_write(path, blob, verify=verify, error=VaultError)
            except BaseException:
                if key_id:
                    oskeyring.delete(key_id)
                raise
        if header.mode == "keyring" and header.key_id != key_id:
            oskeyring.delete(header.key_id)

    def export(self, name: str, out_path: Path | str, passphrase: str | None = None,
               export_passphrase: str | None = None, *, force: bool = False) -> Path:
        """Write profile ``name`` to ``out_path`` encrypted under a separate export passphrase.

        The export file is bound to the persona's backbone fingerprint and is not
        tied to this machine's keyring: it opens anywhere with the export passphrase.
        """
        out = Path(out_path).expanduser()
        self.check_export_path(out)
        if out.exists() and not force:
            raise ProfileExistsError(f"{out} already exists (use force / --force to overwrite it)")
        export_pw = _resolve_passphrase(export_passphrase, ENV_EXPORT_PASSPHRASE)
        if export_pw is None:
            raise PassphraseRequiredError(f"an export passphrase is required (or set {ENV_EXPORT_PASSPHRASE})")
        payload, header = self._load_payload(name, passphrase, None)
        _to_prefix(payload, header, None)  # a valid prefix, bound to the header's backbone
        blob = _crypto.seal(payload, kind=KIND_EXPORT, fingerprint=header.fingerprint,
                            passphrase=export_pw, kdf=self.kdf)
        if not out.parent.is_dir():
            raise VaultError(f"folder {out.parent} does not exist")
        remove_stale_temps(out)
        atomic_write(out, blob, error=VaultError)
        return out

    def check_export_path(self, out_path: Path | str) -> Path:
        """Refuse an export target inside the vault folder (it would replace or shadow a profile)."""
        out = Path(out_path).expanduser()
        try:
            parent = Path(os.path.realpath(out.parent))
            root = Path(os.path.realpath(self.root))
        except OSError:  # pragma: no cover - realpath does not raise on POSIX
            return out
        if parent == root or root in parent.parents:
            raise VaultError(f"refusing to export into the vault folder {self.root}; "
                             "choose a file outside it (e.g. in your home folder)")
        return out

    def import_file(self, path: Path | str, export_passphrase: str | None = None,
                    passphrase: str | None = None, *, name: str | None = None, force: bool = False,
                    fingerprint: str | None = None) -> str:
        """Import an export file as a profile (default name: the file's stem); returns the name.

        Every file is treated as hostile: size, structure and KDF bounds are
        checked first, then the backbone (``fingerprint``, refused with a message
        naming both), then the export passphrase.
        """
        src = Path(path).expanduser()
        if name is None:
            stem = src.name[: -len(SUFFIX)] if src.name.endswith(SUFFIX) else src.stem
            try:
                name = validate_name(stem)
            except ProfileNameError:
                raise ProfileNameError(f"the file name does not make a valid profile name; pass a name "
                                       f"(--name). {ProfileNameError.__doc__}") from None
        target = self.path(name)
        data, header = _read_export(src)
        _check_fingerprint(header.fingerprint, fingerprint, f"export file {src.name}")
        if not force and target.exists():
            raise ProfileExistsError(f"profile {name!r} already exists (use force / --force to replace it)")
        payload = self._unseal(data, header, export_passphrase, None, ENV_EXPORT_PASSPHRASE,
                               f"export file {src.name}")
        _to_prefix(payload, header, None)  # validate; store the exact bytes (bit-identical round trip)
        self._save_payload(name, payload, header.fingerprint, passphrase, force)
        return name

    # --- internals ----------------------------------------------------------
    def _load_payload(self, name: str, passphrase: Any, fingerprint: str | None) -> tuple[bytes, Header]:
        path = self.path(name)
        with self._locked():
            data, _ = self._read(path, name)
        header = _crypto.read_header(data, kind=KIND_PROFILE)
        _check_fingerprint(header.fingerprint, fingerprint, f"profile {name!r}")
        return self._unseal(data, header, passphrase, name, ENV_PASSPHRASE, f"profile {name!r}"), header

    def _save_payload(self, name: str, payload: bytes, fingerprint: str, passphrase: Any, force: bool) -> Path:
        path = self.path(name)
        if not force and path.exists():  # fail fast, before the KDF; checked again under the lock
            raise ProfileExistsError(f"profile {name!r} already exists (use force / --force to replace it)")
        blob, key_id = self._seal_profile(name, payload, fingerprint, passphrase, ENV_PASSPHRASE)
        try:
            with self._locked():
                old = self._header_if_any(path, name)
                if not force and (old is not None or os.path.lexists(path)):
                    raise ProfileExistsError(f"profile {name!r} already exists (use force / --force to replace it)")
                atomic_write(path, blob, error=VaultError)
        except BaseException:
            if key_id:
                oskeyring.delete(key_id)
            raise
        if old is not None and old.mode == "keyring" and old.key_id != key_id:
            oskeyring.delete(old.key_id)
        return path

    def _seal_profile(self, name: str, payload: bytes, fingerprint: str, passphrase: Any,
                      env: str | None) -> tuple[bytes, str | None]:
        """(file bytes, keyring key id or None) for a new profile file."""
        context = _context(name)
        pw = None if passphrase is KEYRING else _resolve_passphrase(passphrase, env)
        if pw is not None:
            return _crypto.seal(payload, kind=KIND_PROFILE, fingerprint=fingerprint, context=context,
                                passphrase=pw, kdf=self.kdf), None
        key_id, secret = _crypto.new_keyring_key()
        try:
            oskeyring.store(key_id, secret)
        except KeyringUnavailableError:
            raise PassphraseRequiredError(
                f"no OS keyring is available here; give a passphrase instead (or set {ENV_PASSPHRASE})"
            ) from None
        try:
            blob = _crypto.seal(payload, kind=KIND_PROFILE, fingerprint=fingerprint, context=context,
                                keyring=(key_id, secret))
        except BaseException:
            oskeyring.delete(key_id)
            raise
        return blob, key_id

    def _unseal(self, data: bytes, header: Header, passphrase: Any, name: str | None,
                env: str | None, what: str) -> bytes:
        if header.mode == "keyring":
            kek = _crypto.derive_kek(header, keyring_secret=oskeyring.fetch(header.key_id, what))
        else:
            pw = None if passphrase is KEYRING else _resolve_passphrase(passphrase, env)
            if pw is None:
                hint = f" (or set {env})" if env else ""
                raise PassphraseRequiredError(f"{what} is protected by a passphrase; none was given{hint}")
            kek = _crypto.derive_kek(header, passphrase=pw)
        return _crypto.unseal(data, header, kek, context=_context(name) if name else b"", what=what)

    def _ensure_root(self) -> None:
        paths.ensure_dir(self.root)  # missing parents 0700 too, whatever the umask
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode):
            raise VaultError(f"vault folder {self.root} is not a folder")
        if os.name == "posix":
            if st.st_uid != os.getuid():
                raise VaultError(f"vault folder {self.root} belongs to another user; refusing to use it")
            if st.st_mode & 0o077:
                warnings.warn(f"vault folder {self.root} was accessible to other users; set it to 0700",
                              VaultPermissionWarning, stacklevel=3)
                os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive inter-process lock on the vault; removes leftover temp files."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            if not lock(fd, self.lock_timeout):
                raise VaultError(f"the vault at {self.root} is busy (another persona process holds it)")
            try:
                self._clean_leftovers()
                yield
            finally:
                unlock(fd)
        finally:
            os.close(fd)

    def _clean_leftovers(self) -> None:
        # only called under the lock: no live writer can own these
        for p in self.root.iterdir():
            if p.name.startswith(".") and TMP_MARK in p.name:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _read(self, path: Path, name: str) -> tuple[bytes, os.stat_result]:
        try:
            # non-blocking: a FIFO named NAME.persona must not hang us while we hold the vault lock
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ProfileNotFoundError(f"no profile named {name!r}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VaultError(f"profile {name!r} is a symbolic link; refusing to follow it") from None
            raise VaultError(f"cannot open profile {name!r} ({exc.strerror or type(exc).__name__})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise VaultError(f"profile {name!r} is not a regular file")
            if os.name == "posix":
                if st.st_uid != os.getuid():
                    raise VaultError(f"profile {name!r} belongs to another user; refusing to read it")
                if st.st_mode & 0o077:
                    warnings.warn(f"profile {name!r} was readable by other users; set it to 0600",
                                  VaultPermissionWarning, stacklevel=4)
                    os.fchmod(fd, 0o600)
            return _read_fd(fd, st.st_size), st
        finally:
            os.close(fd)

    def _header_if_any(self, path: Path, name: str) -> Header | None:
        """The header of an existing profile file (None if absent or unreadable)."""
        try:
            data, _ = self._read(path, name)
            return _crypto.read_header(data, kind=KIND_PROFILE)
        except VaultError:
            return None


def needs_passphrase(name: str | None = None, root: Path | str | None = None) -> bool:
    """Whether opening profile ``name`` needs a passphrase (False for keyring-mode profiles).

    Without a name the answer is True (cannot tell); a missing profile raises
    :class:`ProfileNotFoundError`.
    """
    if name is None:
        return True
    return Vault(root).info(name).mode == "passphrase"


# --- helpers -------------------------------------------------------------------
def _context(name: str | None) -> bytes:
    return b"profile:" + name.encode("utf-8") if name else b""


def _resolve_passphrase(passphrase: str | None, env: str | None) -> str | None:
    if passphrase is not None:
        if not isinstance(passphrase, str) or not passphrase:
            raise PassphraseRequiredError("a passphrase must be a non-empty string")
        return passphrase
    if env:
        value = os.environ.get(env)
        if value:
            return value
    return None


def _check_fingerprint(have: str, want: str | None, what: str) -> None:
    if want is None:
        return
    if str(want).lower() != have:
        raise BackboneMismatchError(
            f"{what} was made for backbone {have[:16]}, but the backbone in use is {str(want)[:16]}; "
            "use the backbone it was made for (--backbone) or enroll again"
        )


def _to_prefix(payload: bytes, header: Header, expect: Any) -> Prefix:
    try:
        prefix = Prefix.from_bytes(payload)
    except PrefixShapeError:
        raise UnsupportedFormatError("the decrypted persona is not a valid KV prefix") from None
    if prefix.backbone != header.fingerprint:
        raise UnsupportedFormatError("the persona's backbone does not match its file header")
    if expect is not None:
        prefix.check(expect)
        if isinstance(expect, PrefixSpec) and (prefix.spec.length, prefix.spec.dtype) != (expect.length, expect.dtype):
            raise PrefixShapeError(
                f"prefix (length, dtype) = {(prefix.spec.length, prefix.spec.dtype)} does not match "
                f"the expected {(expect.length, expect.dtype)}"
            )
    return prefix


def _read_fd(fd: int, size: int) -> bytes:
    if size > _crypto.MAX_FILE:
        raise UnsupportedFormatError(f"the file is too large to be a persona ({size} bytes)")
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, min(1 << 20, _crypto.MAX_FILE + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > _crypto.MAX_FILE:
            raise UnsupportedFormatError("the file is too large to be a persona")
    return b"".join(chunks)


def _read_bounded(path: Path) -> bytes:
    """The bytes of a (hostile) file: only a regular file, checked before it is opened and
    again after a non-blocking open (a FIFO or a device could block or never end)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UnsupportedFormatError(f"{path} is not a regular file")
    except FileNotFoundError:
        raise VaultError(f"file not found: {path}") from None
    except OSError as exc:
        raise VaultError(f"cannot open {path} ({exc.strerror or type(exc).__name__})") from None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise VaultError(f"file not found: {path}") from None
    except OSError as exc:
        raise VaultError(f"cannot open {path} ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedFormatError(f"{path} is not a regular file")
        return _read_fd(fd, st.st_size)
    finally:
        os.close(fd)
