"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad flag, a malformed file, a missing image). Entry points
catch it and print one line, without a traceback, and exit with status 2. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; its message says what is wrong and what to do."""


def flag_name(dest: str) -> str:
    """The documented spelling of a flag in messages (``--img-size`` for the destination ``img_size``)."""
    return "--" + dest.replace("_", "-")
