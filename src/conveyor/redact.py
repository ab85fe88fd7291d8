"""Masks registered secret values in everything the kit prints or logs."""

from __future__ import annotations

MASK = "***"


class Redactor:
    """Holds the secret values resolved in this run and replaces them in text.

    One instance per run, owned by the Runner and handed to whatever resolves secrets; there is no
    module-level registry for tests to reset.
    """

    def __init__(self) -> None:
        self._values: set[str] = set()

    def register(self, value: str) -> None:
        """Remember a secret value; very short values are refused as they would mask ordinary text."""
        if len(value) >= 4:
            self._values.add(value)

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text
