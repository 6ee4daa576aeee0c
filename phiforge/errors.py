"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class PhiforgeError(Exception):
    """A user-facing error: its message names the file, key or field at fault and what was expected."""
