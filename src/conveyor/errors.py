"""One exception family for the kit; tasks map it to an exit code in one place (conveyor.tasks._base)."""

from __future__ import annotations


class ConveyorError(Exception):
    """A failure the user can act on. Its message is one line; it never carries a traceback to the user."""

    exit_code = 1


class ConfigError(ConveyorError):
    """Configuration is wrong: names the file, the key and what was expected."""

    exit_code = 2


class UsageError(ConveyorError):
    """A flag or argument given on the command line is wrong."""

    exit_code = 2


class SecretError(ConveyorError):
    """A secret reference could not be parsed or resolved (the value is never part of the message)."""

    exit_code = 2


class ToolMissing(ConveyorError):
    """An executable the step needs is not installed; the message names the fix."""

    exit_code = 127


class CommandFailed(ConveyorError):
    """An external command exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, tail: str = "") -> None:
        self.argv = argv
        self.returncode = returncode
        self.tail = tail
        detail = f": {tail}" if tail else ""
        super().__init__(f"`{' '.join(argv[:3])}` failed with exit code {returncode}{detail}")
