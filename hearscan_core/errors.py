"""Errors shown to users: each names the file or option at fault and what to do."""


class UserFacingError(Exception):
    """An error caused by the user's input (a file, a flag, a checkpoint) that names the fix.

    The `hearscan` command prints it without a traceback and exits with status 2.
    Subclasses ValueError-like semantics are not implied; catch this class explicitly.
    """


class CheckpointError(UserFacingError):
    """A checkpoint that cannot be loaded: wrong keys, wrong shapes, unsafe pickle, missing file."""


class AudioInputError(UserFacingError):
    """An audio file or array that cannot be used: corrupt, missing, wrong rate, stereo, NaN, too short."""
