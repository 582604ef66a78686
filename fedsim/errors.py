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


def shorten(value: object, limit: int = 80) -> str:
    """Text of a user's value (or of an exception) for an error message, at most ``limit``
    characters on one line: a 10^6-element list or a 100k-character string must not become a
    5 MB "one-line" error. Strings are shown without quotes (messages quote them themselves);
    a cut list says how many items it had."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except RecursionError:  # a self-referencing value
            text = f"<a self-referencing {type(value).__name__}>"
    text = " ".join(text[: 4 * limit].split())
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} items)" if not isinstance(value, str) and hasattr(value, "__len__") else ""
    return f"{text[: max(limit - 3 - len(size), 10)].rstrip()}...{size}"


def shorten_path(path: object, limit: int = 60) -> str:
    """A path for an error message: whole if short, else ``...`` and its last ``limit``
    characters (the file name and the folders nearest to it say the most)."""
    text = " ".join(str(path).split())
    if len(text) <= limit:
        return text
    tail = text[-(limit - 3) :]
    cut = tail.find("/")
    return "..." + (tail[cut:] if 0 <= cut < len(tail) // 2 else tail)


class TrainingDiverged(FedsimError):
    """A client's model gave NaN or inf (a learning rate too large for the data's scale): raised on
    the actor, re-raised as itself by the driver, so the run ends FAILED with one line."""


class RayStartError(FedsimError):
    """Ray could not be started or reached (the machine, not the input: memory, /tmp, a
    cluster address); the message says what to do."""
