"""The project's errors: every one a user can fix is a `UserError`, whose message names the
problem and the fix on one line; each CLI prints it as `error: ...` and exits non-zero.

Each class stays importable from the module that raises it (`domains.files.CorpusError`, ...);
they live here so that a CLI catches one base class, not a list that drifts from the raisers.
The second base of each keeps code that catches ValueError or RuntimeError working.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or state the user can fix: the message names it and the fix, on one line."""


class ConfigError(UserError, ValueError):
    """A bad setting: the message names it and the fix."""


class CorpusError(UserError, ValueError):
    """A corpus file that cannot be used: the message names it and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line, whatever the path holds


class ModelError(UserError, ValueError):
    """A base model that cannot be used: the message names the folder and the fix."""


class ServerError(ModelError):
    """A vLLM server that is unreachable or refused a request: the message names the URL and the fix."""


class StorageError(UserError, RuntimeError):
    """A database or run folder that cannot be used: the message names it and the fix."""


class ArtifactError(StorageError):
    """An artifact folder that fails its manifest: the message names it and the fix."""


class QueryError(UserError, ValueError):
    """A filter or sort the database cannot answer: the message names it and the choices."""


class BrowserError(UserError, RuntimeError):
    """No browser, or the browser did not answer: the message names the fix."""


def check(cond: bool, msg: str) -> None:
    """Raise ConfigError(msg) unless `cond` holds (checked at construction)."""
    if not cond:
        raise ConfigError(msg)
