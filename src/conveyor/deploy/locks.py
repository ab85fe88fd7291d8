"""An exclusive lock file per environment (compose target): created atomically, stale after a TTL."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from conveyor.deploy.model import LockHeld, Owner
from conveyor.errors import ConveyorError

LOCK_DIR = Path(".conveyor/locks")


class FileLock:
    def __init__(self, root: Path, env: str) -> None:
        self.env = env
        self.path = root / LOCK_DIR / f"{env}.lock"

    def holder(self) -> Owner | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return Owner("unknown", "unknown", 0, "unknown", self.path.stat().st_mtime)
        return Owner(**data)

    def acquire(self, owner: Owner, ttl: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                held = self.holder()
                if held is not None and time.time() - held.since > ttl:
                    raise LockHeld(
                        f"{self.env} is locked by {held.describe()}, stale (older than {ttl}s): "
                        f"`invoke lock.release --env {self.env} --force` breaks it"
                    ) from None
                if held is None:
                    continue  # released between our attempt and the read: try once more
                raise LockHeld(f"{self.env} is being deployed by {held.describe()}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(owner), handle)
            return
        raise LockHeld(f"{self.env}: could not take the lock {self.path}")

    def release(self, owner: Owner | None, *, force: bool = False) -> None:
        held = self.holder()
        if held is None:
            if force:
                raise ConveyorError(f"{self.env} is not locked")
            return
        if not force and owner is not None and (held.pid, held.host) != (owner.pid, owner.host):
            return  # not ours (someone forced it and deployed since): leave it alone
        self.path.unlink(missing_ok=True)
