"""Errors a user can fix (bad config, missing data, unreadable checkpoint), and the early check of
output paths that raises one.

The CLI prints them in one line and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path


class UsageError(Exception):
    """Base of all user-facing errors."""


class ConfigError(UsageError):
    """A config key is unknown or its value is invalid; the message names the key."""


class DataError(UsageError):
    """Data is missing or malformed (a path, a list file line, an annotation)."""


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite; the message names the steps and what to change."""


class CheckpointError(UsageError):
    """A checkpoint cannot be read or does not match the model (names missing/unexpected keys)."""


class Interrupted(Exception):
    """SIGTERM / SIGINT stopped a run after writing a checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def check_writable(path: str | Path, name: str, folder: bool) -> None:
    """Fail now, before any work, if the output `path` (a folder, or a file when `folder` is False)
    could not be written; `name` is the option or config key that gave it. Creates nothing."""
    path = Path(path)
    given = f"{name} {path}" if name.startswith("-") else f"{name}={path}"  # as the user wrote it
    if path.exists():
        if folder != path.is_dir():
            raise UsageError(f"{given}: " + ("exists and is not a folder" if folder else "is a folder; give a file name"))
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            raise UsageError(f"{given}: no permission to write " + ("in it" if folder else "it"))
        return
    parent = path.absolute().parent
    while not parent.exists():  # the nearest existing folder is where the missing ones will be made
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{given}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{given}: no permission to write in {parent}")
