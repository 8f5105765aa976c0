"""The one base class of every error that is the user's to fix (not a bug in metarec).

A wrong option, an unknown name, a bad value, a malformed data file, a missing data folder,
a refused download: each is raised as a subclass of :class:`UserError` with a message that names
the file, line, key or value at fault and says what to do. The command line prints such an
error as ONE line on stderr and exits with status 2 (``metarec --debug ...`` shows the
traceback); anything else is a bug and keeps its traceback.

Modules keep their own specific classes (``ConfigError``, ``DataFormatError``, ...) and add
this base, so ``except ValueError`` in older code still works.
"""

from __future__ import annotations

#: Exit status of a command refused because of the user's input (click uses 2 for usage errors too).
USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error in the user's input; its message is complete on one line."""

    def one_line(self) -> str:
        """The message folded onto one line (a data error may quote a multi-line value)."""
        text = str(self.args[0]) if self.args and isinstance(self.args[0], str) else str(self)
        return " ".join(text.split())


def one_line(exc: BaseException) -> str:
    """Any exception's message on one line, prefixed by its class name when it is not a UserError."""
    if isinstance(exc, UserError):
        return exc.one_line()
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())


__all__ = ["USER_ERROR_EXIT", "UserError", "one_line"]
