"""Exceptions the library raises on purpose, each with a one-line message.

The CLI maps every :class:`FuseError` to exit code 2 and prints only its
message; anything else escaping is a bug in tflite-fuse.
"""


class FuseError(Exception):
    """Base class: a problem the user can act on, described in one line."""


class BadModelError(FuseError):
    """The input is not a TFLite model we can safely read (missing, not a
    flatbuffer, truncated, corrupt, or an unsupported schema version)."""


class UsageError(FuseError):
    """The request itself is wrong (bad option, output path, ...)."""


class WriteError(FuseError):
    """The output could not be written; nothing was left behind."""
