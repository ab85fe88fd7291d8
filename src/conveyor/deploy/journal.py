"""History: a JSON-lines journal per environment (who, when, sha, image, result, duration, rollback)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError

HISTORY_DIR = Path(".conveyor/history")


class FileJournal:
    def __init__(self, root: Path, env: str) -> None:
        self.path = root / HISTORY_DIR / f"{env}.jsonl"

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        entries: list[dict[str, Any]] = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConveyorError(
                    f"{self.path}:{number}: not a JSON line (the journal was edited?)"
                ) from None
        return entries

    def record(self, entry: dict[str, object]) -> dict[str, object]:
        """Append one entry (numbered, timestamped); one write per line so concurrent appends stay whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        numbered = {"id": len(self.entries()) + 1, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
        line = json.dumps(numbered, sort_keys=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return numbered

    def find(self, number: int) -> dict[str, Any]:
        for entry in self.entries():
            if entry.get("id") == number:
                return entry
        raise ConveyorError(f"history of {self.path.stem} has no entry {number} (see `invoke history`)")

    def last_good_before_current(self) -> dict[str, Any]:
        """The newest good deploy of a sha other than the newest good one (the default rollback target)."""
        good: list[dict[str, Any]] = [
            e for e in self.entries() if e.get("result") == "succeeded" and e.get("image")
        ]
        if not good:
            raise ConveyorError(
                f"no successful deploy recorded for {self.path.stem}: nothing to roll back to"
            )
        current = str(good[-1]["git_sha"])
        earlier = [e for e in good if e["git_sha"] != current]
        if earlier:
            return earlier[-1]
        raise ConveyorError(f"only one release ({current[:12]}) was ever deployed to {self.path.stem}")
