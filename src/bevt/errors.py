"""Errors a user can fix (bad config, missing data, unreadable checkpoint).

The CLI prints them in one line and exits with code 2 instead of showing a traceback.
"""


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
