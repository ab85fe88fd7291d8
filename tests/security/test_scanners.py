"""The security scanners on known-bad fixtures (each must find it) and on the project itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import security
from tests.conftest import REPO, engine_missing

pytestmark = pytest.mark.scanners


@pytest.fixture(autouse=True)
def scanners() -> None:
    for tool in ("bandit", "pip-audit", "hadolint", "checkov", "kubectl"):
        if shutil.which(tool) is None:
            engine_missing(f"{tool} not installed (pip install -e '.[scanners]')")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(REPO / ".checkov.yaml", tmp_path / ".checkov.yaml")
    (tmp_path / security.REPORTS).mkdir(parents=True)
    return tmp_path


def test_bandit_finds_shell_injection(root: Path) -> None:
    (root / "bad").mkdir()
    (root / "bad/run.py").write_text(
        "import subprocess\n\n\ndef go(x):\n    subprocess.call('ls ' + x, shell=True)\n"
    )
    result = security.bandit(root, ["bad"])
    assert result.status == "findings"
    assert result.counts["high"] >= 1


def test_hadolint_finds_a_root_user(root: Path) -> None:
    (root / "Dockerfile").write_text('FROM debian:12\nUSER root\nCMD ["sh"]\n')
    result = security.hadolint(root, ["Dockerfile"])
    assert result.status == "findings"
    assert result.counts["warning"] >= 1  # DL3002: last USER should not be root


def test_checkov_finds_a_container_without_limits(root: Path) -> None:
    (root / "deploy.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: x}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n"
        "    spec:\n      containers:\n        - name: web\n          image: nginx@sha256:" + "0" * 64 + "\n"
    )
    result = security.checkov(root, ["deploy.yaml"], [], [])
    assert result.status == "findings"
    report = (root / result.report).read_text()
    assert "CKV_K8S_11" in report  # CPU limits
    assert "CKV_K8S_13" in report  # memory limits


def test_pip_audit_with_no_reachable_service_is_unverified_never_clean(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "req.txt").write_text("idna==3.7\n")
    for var in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there
    result = security.pip_audit(root, "req.txt")
    assert result.status == "unverified"
    assert "did not report the canary" in result.detail


def test_the_project_passes_with_only_pip_audit_unverified() -> None:
    argv = [sys.executable, "-m", "conveyor.security", "--allow-unverified"]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    names = ("bandit", "pip-audit", "hadolint", "checkov")
    rows = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.startswith(names)}
    assert rows["bandit"] == rows["hadolint"] == rows["checkov"] == "CLEAN"
    assert rows["pip-audit"] in ("CLEAN", "UNVERIFIED")
    if rows["pip-audit"] == "UNVERIFIED":
        strict = subprocess.run([sys.executable, "-m", "conveyor.security", "--only", "pip-audit"], cwd=REPO,
                                capture_output=True, text=True, check=False, timeout=900)  # fmt: skip
        assert strict.returncode == 1
        assert "pass --allow-unverified to accept that" in strict.stdout
