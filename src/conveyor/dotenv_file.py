"""Record machine-local settings (e.g. which local base image to use) in the project's gitignored .env."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def update(path: Path, values: Mapping[str, str]) -> None:
    """Set ``KEY=value`` lines in ``path``, replacing existing keys and keeping every other line."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(values)
    out: list[str] = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        if key in pending:
            out.append(f"{key}={pending.pop(key)}")
        else:
            out.append(line)
    out += [f"{key}={value}" for key, value in pending.items()]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
