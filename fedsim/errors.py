"""User-facing errors.

Anything a researcher can fix by changing their input (a config key, a data file, an override)
raises a ``FedsimError``. The CLI prints its message as one line and exits with status 2, with no
traceback; everything else is a bug and keeps its traceback.
"""


class FedsimError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""


class ConfigError(FedsimError):
    """A bad config file, key, value or ``--set`` override."""


class DataError(FedsimError):
    """A missing or malformed dataset file, or an impossible partition of it."""
