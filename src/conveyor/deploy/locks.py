"""Deploy locks: one acquire/release policy over three stores (a file, an SSM parameter, a Lease).

A store only has to create atomically (refusing when the lock exists), read and delete. The policy -
who holds it, when it is stale, that a release never removes a lock someone else took since - is here.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from conveyor.deploy.model import LockHeld, Owner
from conveyor.errors import ConveyorError

LOCK_DIR = Path(".conveyor/locks")


class StoredLock:
    """Subclasses implement _create (atomic; False when it exists), _read (owner JSON or None), _delete."""

    env: str

    def _create(self, owner_json: str, owner: Owner, ttl: int) -> bool:
        raise NotImplementedError

    def _read(self) -> str | None:
        raise NotImplementedError

    def _delete(self) -> None:
        raise NotImplementedError

    def holder(self) -> Owner | None:
        raw = self._read()
        if raw is None:
            return None
        try:
            return Owner(**json.loads(raw))
        except (ValueError, TypeError):
            return Owner("unknown", "unknown", 0, "unknown", 0.0)

    def acquire(self, owner: Owner, ttl: int) -> None:
        for _ in range(2):
            if self._create(json.dumps(asdict(owner)), owner, ttl):
                return
            held = self.holder()
            if held is None:
                continue  # released between our attempt and the read: try once more
            if time.time() - held.since > ttl:
                raise LockHeld(
                    f"{self.env} is locked by {held.describe()}, stale (older than {ttl}s): "
                    f"`invoke lock.release --env {self.env} --force` breaks it"
                )
            raise LockHeld(f"{self.env} is being deployed by {held.describe()}")
        raise LockHeld(f"{self.env}: the lock changed hands twice while taking it; try again")

    def release(self, owner: Owner | None, *, force: bool = False) -> None:
        held = self.holder()
        if held is None:
            if force:
                raise ConveyorError(f"{self.env} is not locked")
            return
        if not force and owner is not None and (held.pid, held.host) != (owner.pid, owner.host):
            return  # not ours (someone forced it and deployed since): leave it alone
        self._delete()


class FileLock(StoredLock):
    """Compose target: one lock file per environment, created atomically with its content."""

    def __init__(self, root: Path, env: str) -> None:
        self.env = env
        self.path = root / LOCK_DIR / f"{env}.lock"

    def _create(self, owner_json: str, owner: Owner, ttl: int) -> bool:
        # Write a private file, then hard-link it into place: link() fails if the lock exists, and a
        # reader never sees a lock file that is still empty.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        draft.write_text(owner_json, encoding="utf-8")
        try:
            os.link(draft, self.path)
        except FileExistsError:
            return False
        finally:
            draft.unlink(missing_ok=True)
        return True

    def _read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _delete(self) -> None:
        self.path.unlink(missing_ok=True)
