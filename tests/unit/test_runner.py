"""The runner really runs argv lists: dry-run, streaming, redaction, timing and clear failures."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from conveyor.errors import CommandFailed, ToolMissing
from conveyor.redact import Redactor
from conveyor.runner import Runner


def runner(dry: bool = False) -> tuple[Runner, io.StringIO]:
    out = io.StringIO()
    return Runner(dry=dry, out=out), out


def test_dry_echoes_and_does_not_run(tmp_path: Path) -> None:
    r, out = runner(dry=True)
    marker = tmp_path / "touched"
    result = r.run(["touch", str(marker)])
    assert result.ok
    assert not marker.exists()
    assert out.getvalue() == f"[dry] touch {marker}\n"


def test_read_only_queries_still_run_under_dry() -> None:
    r, _ = runner(dry=True)
    assert r.run([sys.executable, "-c", "print('hi')"], capture=True, mutates=False).stdout == "hi\n"


def test_streams_output_and_masks_registered_secrets() -> None:
    r, out = runner()
    r.redact.register("s3cr3t-value")
    r.run([sys.executable, "-c", "print('token=s3cr3t-value'); print('done')"])
    text = out.getvalue()
    assert "s3cr3t-value" not in text
    assert "token=***\ndone\n" in text


def test_secret_in_argv_is_masked_in_the_echo() -> None:
    r, out = runner(dry=True)
    r.redact.register("p4ssw0rd")
    r.run(["echo", "p4ssw0rd"])
    assert out.getvalue() == "[dry] echo ***\n"


def test_failure_raises_with_the_last_output_line() -> None:
    r, _ = runner()
    with pytest.raises(CommandFailed) as exc:
        r.run([sys.executable, "-c", "import sys; print('first'); sys.exit('boom: disk full')"])
    assert exc.value.returncode == 1
    assert str(exc.value).endswith("failed with exit code 1: boom: disk full")


def test_check_false_returns_the_code() -> None:
    r, _ = runner()
    assert r.run([sys.executable, "-c", "raise SystemExit(3)"], check=False, capture=True).returncode == 3


def test_missing_tool_names_the_fix() -> None:
    r, _ = runner()
    with pytest.raises(ToolMissing) as exc:
        r.run(["hadolint-definitely-not-here", "x"])
    assert "`hadolint-definitely-not-here` is not installed or not on PATH; fix:" in str(exc.value)


def test_missing_known_tool_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing, match="apt-get install debootstrap"):
        Runner(out=io.StringIO()).which("debootstrap")


def test_step_prints_one_line_with_duration() -> None:
    r, out = runner()
    with r.step("build image"):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "==> build image"
    assert lines[1].startswith("<== build image: done in ")


def test_step_reports_failure() -> None:
    r, out = runner()
    with pytest.raises(RuntimeError), r.step("push"):
        raise RuntimeError("x")
    assert "<== push: failed after" in out.getvalue()


def test_redactor_masks_longest_first_and_ignores_tiny_values() -> None:
    red = Redactor()
    red.register("abc")  # too short to mask safely
    red.register("abcdef")
    red.register("abcdefgh")
    assert red("abc abcdef abcdefgh") == "abc *** ***"
