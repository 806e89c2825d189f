"""The one exception type for refusals a user can act on.

``fer-ray`` answers a ``FerRayError`` (a missing input, a bad flag, a damaged artifact, a run
directory holding another run) with one line and exit status 2; any other exception is a bug
and keeps its traceback (exit 1). So code raises ``FerRayError`` (or a subclass) only for what
the user did or gave, never for a broken invariant of our own.

It is a ``ValueError``: pydantic turns one raised in a config's validator into a
``ValidationError`` like any other rule of that config, and callers of the library that catch
``ValueError`` keep working.
"""


class FerRayError(ValueError):
    """A refusal the user can act on; its message is the whole one-line answer."""


class InputNotFound(FerRayError, FileNotFoundError):
    """A file or folder the user named is not there (also a ``FileNotFoundError`` for callers)."""
