"""The revision being built: sha, dirty flag and branch, read with git through the runner."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import CommandFailed, ConveyorError
from conveyor.runner import Runner


@dataclass(frozen=True)
class Revision:
    sha: str
    dirty: bool
    branch: str | None
    remote: str = ""  # origin's URL without credentials: the image's source label

    @property
    def tag(self) -> str:
        """The image tag of this revision: 12 hex digits of the sha, ``-dirty`` for uncommitted changes."""
        return self.sha[:12] + ("-dirty" if self.dirty else "")

    @property
    def branch_tag(self) -> str | None:
        if not self.branch:
            return None
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.branch)[:128].lstrip(".-") or None


def revision(runner: Runner, root: Path) -> Revision:
    def git(*args: str) -> str:
        return runner.run(["git", *args], cwd=root, capture=True, mutates=False).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
    except CommandFailed:
        raise ConveyorError(
            f"{root} is not a git checkout with a commit: images are tagged by git sha"
        ) from None
    dirty = bool(git("status", "--porcelain", "--untracked-files=normal"))
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    try:
        remote = re.sub(r"//[^/@]*@", "//", git("config", "--get", "remote.origin.url"))
    except CommandFailed:  # no remote configured
        remote = ""
    return Revision(sha, dirty, None if branch == "HEAD" else branch, remote)
