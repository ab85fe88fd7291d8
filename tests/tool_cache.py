"""What a deterministic tool answered for exactly these input bytes, kept on disk and shared by the test
sessions of every Python (they run side by side) and by later runs.

The tools still run for real: the first time an input is seen, and again whenever the tool changes. The key
is the tool's identity (its version, or its resolved path, size and mtime: a reinstall rewrites it) plus
every byte it reads, so a repeat can only differ if the tool were not a function of its input. Kept in
build/tool-cache/<tool>/ (remove the folder to start cold).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / "build" / "tool-cache"


def executable_identity(name: str, path: str | None = None) -> str:
    """The resolved executable ``name`` (or ``path``) as path, size and mtime; 'missing' if there is none."""
    found = path or shutil.which(name)
    if found is None:
        return f"{name}: missing"
    real = os.path.realpath(found)
    stat = os.stat(real)
    return f"{real}:{stat.st_size}:{stat.st_mtime_ns}"


def memo(tool: str, identity: str, key: bytes, compute: Callable[[], str]) -> str:
    """``compute()``'s text for (``identity``, ``key``): from the cache, or computed and stored atomically
    (two sessions computing the same entry at once write the same bytes)."""
    digest = hashlib.sha256(identity.encode() + b"\0" + key).hexdigest()
    entry = CACHE / tool / digest
    try:
        return entry.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    value = compute()
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.with_name(f".{digest}.{os.getpid()}")
    partial.write_text(value, encoding="utf-8")
    os.replace(partial, entry)
    return value
