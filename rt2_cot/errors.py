"""The runtime's user-facing errors. The CLI prints `error: <message>` and exits non-zero."""


class Rt2CotError(Exception):
    """Base for every error a user can cause; the message says what to do next."""


class ActionParseError(Rt2CotError):
    """Generated text is not a valid `Plan: ... Action: <8 ints>` (nothing moves)."""


class ModelLoadError(Rt2CotError):
    """A --model argument is not a loadable checkpoint, or a remote server is unreachable."""


class BackendError(Rt2CotError):
    """A backend failed while generating (server dropped, malformed stream, timeout)."""


class ConfigError(Rt2CotError):
    """A config, prompt template or suite file is missing or malformed."""


class SessionError(Rt2CotError):
    """A session folder is missing, corrupt, locked, or a path points outside the sessions root."""
