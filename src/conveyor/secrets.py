"""Secret references (`env:NAME`, `file:PATH`, `aws-sm:ID[#key]`, `ssm:/path`), resolved only when needed.

Parsing is pure and happens when config is loaded, so a typo fails early. Resolving happens only when a
deploy needs the value; every resolved value is registered with the run's redactor before it is returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import SecretError
from conveyor.redact import Redactor

SCHEMES = ("env", "file", "aws-sm", "ssm")


@dataclass(frozen=True)
class SecretRef:
    """A parsed reference; ``str()`` gives the reference back, never a value."""

    scheme: str
    target: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}" + (f"#{self.key}" if self.key else "")


def parse_ref(text: str, *, where: str) -> SecretRef:
    """Parse ``text`` as a secret reference; ``where`` names the file/key for the error."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in SCHEMES:
        raise SecretError(
            f"{where}: `{_shorten(text)}` is not a secret reference; expected one of "
            + ", ".join(f"{s}:..." for s in SCHEMES)
        )
    if not rest:
        raise SecretError(f"{where}: `{scheme}:` needs a target after the colon")
    key = None
    if scheme == "aws-sm" and "#" in rest:
        rest, key = rest.split("#", 1)
    if scheme == "ssm" and not rest.startswith("/"):
        raise SecretError(f"{where}: ssm parameter names start with '/', got `{rest}`")
    return SecretRef(scheme, rest, key)


def _shorten(text: str) -> str:
    # The rejected text might itself be a pasted secret: show only its start.
    return text if len(text) <= 12 else text[:8] + "..."


AwsClientFactory = Callable[[str], Any]


class SecretResolver:
    """Turns references into values for one run. AWS clients come from an injected factory, lazily."""

    def __init__(
        self,
        redactor: Redactor,
        *,
        environ: Mapping[str, str],
        root: Path,
        aws: AwsClientFactory | None = None,
    ) -> None:
        self._redact = redactor
        self._environ = environ
        self._root = root
        self._aws = aws

    def resolve(self, ref: SecretRef) -> str:
        value = self._lookup(ref)
        self._redact.register(value)
        return value

    def _lookup(self, ref: SecretRef) -> str:
        if ref.scheme == "env":
            if ref.target not in self._environ:
                raise SecretError(
                    f"secret {ref}: variable {ref.target} is not set (.env files or environment)"
                )
            return self._environ[ref.target]
        if ref.scheme == "file":
            path = (self._root / ref.target).expanduser()
            try:
                return path.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise SecretError(f"secret {ref}: cannot read {path}: {exc.strerror}") from None
        if self._aws is None:
            raise SecretError(f"secret {ref}: no AWS access configured for this environment")
        if ref.scheme == "aws-sm":
            return self._secrets_manager(ref, self._aws)
        return self._ssm(ref, self._aws)

    def _secrets_manager(self, ref: SecretRef, aws: AwsClientFactory) -> str:
        try:
            response = aws("secretsmanager").get_secret_value(SecretId=ref.target)
        except Exception as exc:  # botocore raises many types; translate at this boundary
            raise SecretError(f"secret {ref}: {_aws_error(exc)}") from None
        text = str(response.get("SecretString", ""))
        if ref.key is None:
            return text
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise SecretError(
                f"secret {ref}: the secret is not JSON, so `#{ref.key}` cannot be taken"
            ) from None
        if not isinstance(data, dict) or ref.key not in data:
            raise SecretError(f"secret {ref}: the secret has no key `{ref.key}`")
        return str(data[ref.key])

    def _ssm(self, ref: SecretRef, aws: AwsClientFactory) -> str:
        try:
            response = aws("ssm").get_parameter(Name=ref.target, WithDecryption=True)
        except Exception as exc:
            raise SecretError(f"secret {ref}: {_aws_error(exc)}") from None
        return str(response["Parameter"]["Value"])


def _aws_error(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"
