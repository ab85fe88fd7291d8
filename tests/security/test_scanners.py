"""The security scanners on known-bad fixtures (each must find it) and on the project itself."""

from __future__ import annotations

import json
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
    result = security.checkov(root, ["deploy.yaml"])
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
    result = security.pip_audit(root, ["req.txt"])
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


# --- a foreign project: the scanners examine ITS things, and examining nothing is an ERROR --------------

ENV = {"PATH": "/usr/bin:/bin"}  # the configuration under test sees no CONVEYOR_* of this machine
LOCAL = "target: compose\nurl: http://127.0.0.1:8080\ncompose: {files: [compose.yaml]}\n"
SHELL_INJECTION = "import subprocess\n\n\ndef go(x):\n    return subprocess.call(x, shell=True)\n"
DOCKERFILE = (
    "ARG BASE_IMAGE=python:3.12-slim\nFROM ${BASE_IMAGE}\nCOPY shop /srv/shop\nUSER 10001\n"
    'HEALTHCHECK CMD ["python", "-c", "print(1)"]\nCMD ["python", "-m", "shop"]\n'
)


def foreign(root: Path, files: dict[str, str]) -> Path:
    """A git project that is not conveyor's: its own package, one compose environment, nothing else."""
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for rel, text in {"deploy/environments/local.yaml": LOCAL, **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def scan(root: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, str], str]:
    """`python -m conveyor.security ARGV` in ``root``: exit code, status per scanner, the printed table."""
    code = security.main(list(argv), root=root, environ=ENV)
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(security.SCANNERS)
    }
    return code, rows, out


def test_bandit_scans_the_project_package_and_not_its_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = foreign(tmp_path, {
        "pyproject.toml": '[project]\nname = "shop"\n',
        "shop/__init__.py": "",
        "shop/run.py": SHELL_INJECTION,
        "shop/tests/test_run.py": SHELL_INJECTION,
        "tests/test_shop.py": SHELL_INJECTION,
    })  # fmt: skip
    code, rows, _ = scan(root, capsys, "--only", "bandit")
    assert (code, rows) == (1, {"bandit": "FINDINGS"})
    data = json.loads((root / security.REPORTS / "bandit.json").read_text())
    assert {r["filename"] for r in data["results"]} == {"shop/run.py"}
    assert "HIGH" in {r["issue_severity"] for r in data["results"]}  # B602: shell=True


def test_a_single_module_app_is_scanned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = foreign(tmp_path, {"app.py": SHELL_INJECTION, "requirements.txt": "flask==3.0.3\n"})
    code, rows, _ = scan(root, capsys, "--only", "bandit")
    assert (code, rows) == (1, {"bandit": "FINDINGS"})


def test_paths_at_an_empty_folder_are_an_error_never_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = foreign(tmp_path, {
        "invoke.yaml": "conveyor:\n  security:\n    paths: [empty]\n",
        "shop/__init__.py": "",
        "shop/run.py": SHELL_INJECTION,
    })  # fmt: skip
    (root / "empty").mkdir()
    code, rows, out = scan(root, capsys, "--only", "bandit", "--allow-unverified")
    assert (code, rows) == (1, {"bandit": "ERROR"})
    assert "scanned 0 file(s), 0 line(s) of Python in empty: set security.paths" in out
    assert "security: FAILED (bandit)" in out


def test_a_package_without_code_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = foreign(tmp_path, {"shop/__init__.py": "", "shop/tests/test_x.py": "x = 1\n"})
    code, rows, out = scan(root, capsys, "--only", "bandit")
    assert (code, rows) == (1, {"bandit": "ERROR"})
    assert "scanned 1 file(s), 0 line(s) of Python in shop" in out


def test_a_missing_configured_path_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = foreign(
        tmp_path, {"invoke.yaml": "conveyor:\n  security:\n    paths: [nope]\n    lock_files: [x.lock]\n"}
    )
    code, rows, out = scan(root, capsys, "--only", "bandit,pip-audit")
    assert (code, rows) == (1, {"bandit": "ERROR", "pip-audit": "ERROR"})
    assert "security.paths (invoke.yaml:3): `nope` does not exist" in out
    assert "security.lock_files (invoke.yaml:4): `x.lock` does not exist" in out


def test_no_lock_file_is_a_pip_audit_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = foreign(tmp_path, {"app.py": "x = 1\n"})
    code, rows, out = scan(root, capsys, "--only", "pip-audit", "--allow-unverified")
    assert (code, rows) == (1, {"pip-audit": "ERROR"})
    assert "no lock files: set security.lock_files" in out


def test_no_dockerfile_is_a_hadolint_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = foreign(tmp_path, {"app.py": "x = 1\n"})
    code, rows, out = scan(root, capsys, "--only", "hadolint")
    assert (code, rows) == (1, {"hadolint": "ERROR"})
    assert "no Dockerfile in the project" in out


def test_hadolint_lints_every_dockerfile_of_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = foreign(tmp_path, {
        "Dockerfile": DOCKERFILE,
        "ops/worker.Dockerfile": 'FROM debian:12\nUSER root\nCMD ["sh"]\n',
    })  # fmt: skip
    code, rows, _ = scan(root, capsys, "--only", "hadolint")
    assert (code, rows) == (1, {"hadolint": "FINDINGS"})
    findings = json.loads((root / security.REPORTS / "hadolint.json").read_text())
    assert {f["file"] for f in findings} == {"ops/worker.Dockerfile"}  # DL3002: last USER is root


def test_without_a_checkov_yaml_the_kit_default_policy_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = foreign(tmp_path, {"Dockerfile": DOCKERFILE})
    code, rows, _ = scan(root, capsys, "--only", "checkov")
    assert (code, rows) == (0, {"checkov": "CLEAN"})  # FROM ${BASE_IMAGE}: the kit skips CKV_DOCKER_7
    (root / ".checkov.yaml").write_text("skip-check: [CKV_K8S_21]\n")  # the project's own policy wins
    code, rows, _ = scan(root, capsys, "--only", "checkov")
    assert (code, rows) == (1, {"checkov": "FINDINGS"})
    assert "CKV_DOCKER_7" in (root / security.REPORTS / "checkov.json").read_text()


def overlay_project(root: Path, placeholder: str) -> Path:
    """A kustomize base/overlay whose Deployment uses ``placeholder`` as its image."""
    deployment = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n"
        f"    spec:\n      containers:\n        - name: web\n          image: {placeholder}\n"
    )
    return foreign(root, {
        "invoke.yaml": "conveyor:\n  image:\n    name: shop-web\n",
        "ops/kube/base/kustomization.yaml": "resources: [deployment.yaml]\n",
        "ops/kube/base/deployment.yaml": deployment,
        "ops/kube/live/kustomization.yaml": "namespace: shop\nresources: [../base]\n",
        "deploy/environments/live.yaml": (
            "target: k8s\nurl: https://shop.example.com\nk8s: {overlay: ops/kube/live, namespace: shop}\n"
        ),
    })  # fmt: skip


def test_checkov_scans_the_overlay_an_environment_deploys_pinned_by_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = overlay_project(tmp_path, "shop-web")
    code, rows, _ = scan(root, capsys, "--only", "checkov")
    assert (code, rows) == (1, {"checkov": "FINDINGS"})  # no limits, no probes, ...
    rendered = (root / security.REPORTS / "k8s-live.yaml").read_text()
    assert f"image: registry.invalid/shop-web@{security.DIGEST}" in rendered
    report = (root / security.REPORTS / "checkov.json").read_text()
    assert "CKV_K8S_11" in report  # CPU limits: the Deployment was examined
    assert "CKV_K8S_43" not in report  # the image is pinned by digest


def test_a_placeholder_no_container_uses_is_an_error_naming_k8s_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = overlay_project(tmp_path, "conveyor-demo")
    code, rows, out = scan(root, capsys, "--only", "checkov")
    assert (code, rows) == (1, {"checkov": "ERROR"})
    assert "environment `live`: no container in ops/kube/live uses the image `shop-web`: set k8s.image" in out


def test_checkov_that_ran_no_check_is_an_error(root: Path) -> None:
    (root / "notes.yaml").write_text("title: not a manifest\n")
    result = security.checkov(root, ["notes.yaml"])
    assert result.status == "error"
    assert "ran 0 checks on notes.yaml" in result.detail
