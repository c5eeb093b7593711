"""User-facing errors: one line saying what and where; the CLI turns them into exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment that stops the run (exit code 2).

    The message is one line naming the file (and line) and the reason. It must never contain
    report text or patient identifiers.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line
        self.reason = message
