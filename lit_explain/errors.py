"""Error types for bad input with a known cause: a wrong config key, a missing or unreadable user file.

Their message is one line that says what is wrong, which file or key it concerns, and the fix. The command
line (``python trainer_cli.py ...``, the ``lit-explain`` script) prints such an error as that one line and
exits with status 2 instead of showing a traceback; any other exception is a fault of the program and keeps
its traceback. In-process callers (tests, notebooks) receive the exception itself.

Both types subclass the built-in exception a caller would expect (``ValueError``, ``FileNotFoundError``), so
code that catches those keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MissingFileError"]


class ConfigError(ValueError):
    """A setting or an input file is wrong in a way the message explains (what, where, the fix)."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file the configuration names (model, checkpoint, cached weights, dataset file) does not exist."""
