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


class DiskFullError(UserFacingError):
    """The disk filled up while writing: names the folder, what was needed (when known) and how to resume."""

    def __init__(self, folder, needed_bytes: int | None = None):
        need = f" ({needed_bytes / 1e6:.1f} MB more were needed)" if needed_bytes else ""
        super().__init__(
            f"the disk holding {folder} is full{need}; nothing half-written was kept and finished tasks are "
            "intact: free some space (or write to another folder), then run the same command again to resume"
        )
