"""The OS keyring (``keyring``): where a keyring-mode profile keeps its random key.

Entries are ``persona-sdk`` / ``profile-key-<key id>``, the secret base64-encoded.
The vault decides when to use it (:mod:`persona_sdk.vault`); nothing here knows
about profiles or passphrases. ``keyring`` is imported only when used.
"""

from __future__ import annotations

import base64
import contextlib

from . import _crypto
from .errors import DecryptionError, KeyringUnavailableError

SERVICE = "persona-sdk"


def _user(key_id: str) -> str:
    return f"profile-key-{key_id}"


def available() -> bool:
    """True when an OS keyring backend is usable here."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring):
            return False
        chained = getattr(backend, "backends", None)
        return not (chained is not None and not chained)
    except Exception:
        return False


def store(key_id: str, secret: bytes) -> None:
    """Keep ``secret`` under ``key_id``; :class:`KeyringUnavailableError` if no backend takes it."""
    try:
        import keyring
        import keyring.errors

        keyring.set_password(SERVICE, _user(key_id), base64.b64encode(secret).decode())
    except Exception:  # NoKeyringError, a locked / broken backend, a missing dbus...
        raise KeyringUnavailableError("no OS keyring is available here") from None


def fetch(key_id: str, what: str) -> bytes:
    """The secret kept under ``key_id``; errors name ``what`` it opens (e.g. "profile 'me'")."""
    try:
        import keyring

        value = keyring.get_password(SERVICE, _user(key_id))
    except Exception:
        raise KeyringUnavailableError(f"{what} keeps its key in the OS keyring, which is not available here") from None
    if value is None:
        raise KeyringUnavailableError(
            f"the OS keyring has no key for {what} (made on another machine or the key was deleted); "
            "move personas between devices with export / import"
        )
    try:
        secret = base64.b64decode(value, validate=True)
    except ValueError:
        secret = b""
    if len(secret) != _crypto.KEY_LEN:
        raise DecryptionError(f"cannot decrypt {what}: wrong passphrase or key, or the file was modified")
    return secret


def delete(key_id: str) -> None:
    """Forget ``key_id`` (silently, if it is not there or the keyring is gone)."""
    with contextlib.suppress(Exception):
        import keyring

        keyring.delete_password(SERVICE, _user(key_id))
