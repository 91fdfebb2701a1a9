"""User-facing errors of the host tools: one line naming the input and the fix, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; ``str()`` is the one line printed, ``hint`` says how."""

    def __init__(self, message: str, hint: str = "", exit_code: int = 2) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code

    def line(self) -> str:
        return f"{self}{'; ' + self.hint if self.hint else ''}"


class DeployError(UserError):
    """A failure of `guestctl deploy` / `rollback`: one line naming the input and the fix (exit 1)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, exit_code=1)
