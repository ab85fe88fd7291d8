"""A Runner that records every argv instead of running it, and answers from a script of replies."""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import CommandFailed
from conveyor.runner import Result, Runner


class Recorder(Runner):
    """Records argv and stdin; each call takes the next reply, (exit code, stdout) or (code, stdout, stderr).

    ``read_only`` fails the test on any call that would change something (``mutates=True``).
    """

    def __init__(self, *replies: tuple[Any, ...], dry: bool = False, read_only: bool = False) -> None:
        super().__init__(out=io.StringIO(), dry=dry)
        self.replies = deque(replies)
        self.read_only = read_only
        self.argv: list[list[str]] = []
        self.stdin: list[str | None] = []

    def run(  # type: ignore[override]
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Any = None,
        capture: bool = False,
        check: bool = True,
        input: str | None = None,
        mutates: bool = True,
        timeout: float | None = None,
    ) -> Result:
        args = [str(a) for a in argv]
        assert not (self.read_only and mutates), f"a read changed something: {args}"
        if self.dry and mutates:
            self.say(f"[dry] {' '.join(args)}")
            return Result(tuple(args), 0)
        self.argv.append(args)
        self.stdin.append(input)
        code, out, err = (*self.replies.popleft(), "")[:3]
        if check and code:
            tail = (err or out).strip().splitlines()
            raise CommandFailed(args, code, tail[-1] if tail else "")
        return Result(tuple(args), code, out, err)
