"""Secret references: parsing is strict, resolving registers the value with the redactor."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.errors import SecretError
from conveyor.redact import Redactor
from conveyor.secrets import SecretRef, SecretResolver, parse_ref


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("env:DB_PASSWORD", SecretRef("env", "DB_PASSWORD")),
        ("file:secrets/db.txt", SecretRef("file", "secrets/db.txt")),
        ("aws-sm:prod/db#password", SecretRef("aws-sm", "prod/db", "password")),
        ("aws-sm:prod/db", SecretRef("aws-sm", "prod/db")),
        ("ssm:/app/redis-url", SecretRef("ssm", "/app/redis-url")),
    ],
)
def test_parse_known_schemes(text: str, ref: SecretRef) -> None:
    assert parse_ref(text, where="x") == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vault:x", "is not a secret reference"),
        ("plain-password-pasted-here", "`plain-pa...` is not a secret reference"),
        ("env:", "`env:` needs a target"),
        ("ssm:no-slash", "ssm parameter names start with '/'"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(SecretError, match=message):
        parse_ref(text, where="local.yaml: secrets.X")


def test_resolve_env_and_file_register_values(tmp_path: Path) -> None:
    (tmp_path / "db.txt").write_text("from-a-file\n")
    red = Redactor()
    resolver = SecretResolver(red, environ={"TOKEN": "from-the-env"}, root=tmp_path)
    assert resolver.resolve(SecretRef("env", "TOKEN")) == "from-the-env"
    assert resolver.resolve(SecretRef("file", "db.txt")) == "from-a-file"
    assert red("from-the-env from-a-file") == "*** ***"


def test_missing_values_are_clear_errors_without_values(tmp_path: Path) -> None:
    resolver = SecretResolver(Redactor(), environ={}, root=tmp_path)
    with pytest.raises(SecretError, match="variable TOKEN is not set"):
        resolver.resolve(SecretRef("env", "TOKEN"))
    with pytest.raises(SecretError, match="cannot read"):
        resolver.resolve(SecretRef("file", "nope.txt"))
    with pytest.raises(SecretError, match="no AWS access configured"):
        resolver.resolve(SecretRef("ssm", "/x"))
