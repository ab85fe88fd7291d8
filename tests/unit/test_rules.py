"""The Prometheus rules: the reference service's pass `promtool check rules` and their unit tests, and the
rules `conveyor init` writes pass the same check and, for a web + worker project, the same unit tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conveyor.init import scaffold
from conveyor.init.detect import Detected, ExtraProcess
from tests.conftest import REPO, engine_missing

RULES = sorted((REPO / "monitoring" / "rules").glob("*.yaml"))
RULE_TESTS = sorted((REPO / "monitoring" / "tests").glob("*.yaml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        engine_missing("promtool not found (apt-get install prometheus)")
    assert found is not None
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """promtool, output kept for the assertion message."""
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def project(*workers: str) -> Detected:
    """A detected project with an HTTP process and the given other processes."""
    return Detected(
        root=REPO,
        name="shop",
        framework="flask",
        entry="shop:app",
        server="gunicorn",
        command=("gunicorn", "shop:app"),
        processes=tuple(ExtraProcess(name, ("python", "-m", f"shop.{name}"), "Procfile") for name in workers),
    )


def alerts(text: str) -> dict[str, str]:
    """alert name -> expression of a rules file."""
    groups = yaml.safe_load(text)["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_the_issue_asks_for_is_there() -> None:
    assert RULES
    assert RULE_TESTS
    found = {name for path in RULES for name in alerts(path.read_text())}
    assert {"ServiceDown", "HighErrorRate", "HighLatencyP95", "WorkerBacklog", "Saturation"} <= found


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_reference_rules_pass_promtool_check(promtool: str, path: Path) -> None:
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_reference_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_fails_on_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check is not a formality: a bad expression fails it."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(up[5m]\n")
    assert run([promtool, "check", "rules", str(broken)]).returncode != 0


@pytest.mark.parametrize("workers", [(), ("worker",), ("worker", "beat")], ids=["web", "worker", "two"])
def test_scaffolded_rules_pass_promtool_check(
    promtool: str, tmp_path: Path, workers: tuple[str, ...]
) -> None:
    text = scaffold.render(project(*workers))["monitoring/rules/service.yaml"]
    path = tmp_path / "service.yaml"
    path.write_text(text)
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    found = alerts(text)
    assert found["ServiceDown"] == 'up{job=~"' + "|".join(["web", *workers]) + '"} == 0'
    assert ("WorkerBacklog" in found) == bool(workers)
    assert "shop.alerts" in text


def test_scaffolded_rules_pass_the_reference_unit_tests(promtool: str, tmp_path: Path) -> None:
    """For a project shaped like the reference (web + worker) the scaffold behaves like its rules."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / "service.yaml").write_text(
        scaffold.render(project("worker"))["monitoring/rules/service.yaml"]
    )
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    result = run([promtool, "test", "rules", *(str(tmp_path / "tests" / p.name) for p in RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_scaffolded_nox_session_checks_the_scaffolded_rules(promtool: str, tmp_path: Path) -> None:
    """`nox -s rules` in a project `conveyor init` wrote passes its rules and fails a broken one."""
    files = scaffold.render(project("worker"))
    for rel in ("noxfile.py", "monitoring/rules/service.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(files[rel])
    nox = [sys.executable, "-m", "nox", "--no-color", "-s", "rules"]
    result = subprocess.run(nox, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout + result.stderr
    (tmp_path / "monitoring/rules/broken.yaml").write_text(
        "groups:\n  - name: x\n    rules:\n      - record: 1\n"
    )
    result = subprocess.run(nox, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode != 0
