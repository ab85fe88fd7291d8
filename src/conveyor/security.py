"""Security scanners behind `nox -s security`: bandit, pip-audit, hadolint, checkov, one summary table.

A scanner that could not do its job is UNVERIFIED, never "clean": pip-audit first audits a canary pin
with known advisories (jinja2==2.4.1); if its vulnerability service cannot confirm those, the service
is unreachable or answering wrong, and "no vulnerabilities" on our lock would mean nothing.

Run: python -m conveyor.security [--allow-unverified] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPORTS = Path("reports/security")
CANARY = "jinja2==2.4.1"  # has published advisories: a working service must report them
DOCKERFILES = ("app/Dockerfile", "images/standins/postgres/Dockerfile", "images/standins/redis/Dockerfile",
               "images/standins/nginx/Dockerfile")  # fmt: skip


@dataclass
class ScanResult:
    name: str
    status: str  # clean | findings | unverified | error
    counts: Counter[str] = field(default_factory=Counter)
    report: str = ""
    detail: str = ""


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=900)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} is not installed")


def bandit(root: Path, targets: list[str]) -> ScanResult:
    report = REPORTS / "bandit.json"
    argv = [
        "bandit",
        "-q",
        "-c",
        "pyproject.toml",
        "-r",
        *targets,
        "-x",
        "app/tests",
        "-f",
        "json",
        "-o",
        str(report),
    ]
    proc = _run(argv, root)
    if proc.returncode not in (0, 1) or not (root / report).is_file():
        return ScanResult(
            "bandit", "error", report=str(report), detail=(proc.stderr or proc.stdout).strip()[-200:]
        )
    data = json.loads((root / report).read_text())
    counts = Counter(r["issue_severity"].lower() for r in data.get("results", []))
    return ScanResult("bandit", "findings" if counts else "clean", counts, str(report))


def pip_audit(root: Path, requirements: str) -> ScanResult:
    report = REPORTS / "pip-audit.json"
    common = [
        "pip-audit",
        "--strict",
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
        "-f",
        "json",
    ]
    canary = root / REPORTS / "pip-audit-canary.txt"
    canary.write_text(CANARY + "\n")
    probe = _run([*common, "-r", str(canary)], root)
    known = probe.stdout.count('"id"') if probe.stdout.startswith("{") else 0
    if known == 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1][:160]
        (root / report).write_text(
            json.dumps({"status": "unverified", "canary": CANARY, "reason": reason}) + "\n"
        )
        detail = f"the vulnerability service did not report the canary {CANARY}: {reason}"
        return ScanResult("pip-audit", "unverified", report=str(report), detail=detail)
    proc = _run([*common, "-r", requirements, "-o", str(report)], root)
    if not (root / report).is_file():
        return ScanResult("pip-audit", "unverified", report=str(report), detail=proc.stderr.strip()[-200:])
    data = json.loads((root / report).read_text())
    skipped = [d["name"] for d in data.get("dependencies", []) if d.get("skip_reason")]
    counts = Counter("unrated" for d in data.get("dependencies", []) for _ in d.get("vulns", []))
    if skipped:
        return ScanResult(
            "pip-audit", "unverified", counts, str(report), f"not audited: {', '.join(skipped)}"
        )
    return ScanResult("pip-audit", "findings" if counts else "clean", counts, str(report))


def hadolint(root: Path, dockerfiles: list[str]) -> ScanResult:
    report = REPORTS / "hadolint.json"
    proc = _run(["hadolint", "--failure-threshold", "warning", "-f", "json", *dockerfiles], root)
    if proc.returncode == 127 or not proc.stdout.startswith("["):
        return ScanResult("hadolint", "error", detail=(proc.stderr or proc.stdout).strip()[-200:])
    (root / report).write_text(proc.stdout)
    counts = Counter(item["level"] for item in json.loads(proc.stdout))
    failing = counts["error"] + counts["warning"]
    return ScanResult("hadolint", "findings" if failing else "clean", counts, str(report))


def checkov(root: Path, k8s_manifests: list[str], dockerfiles: list[str], ci_files: list[str]) -> ScanResult:
    """Offline (--skip-download); our reasoned skips live in .checkov.yaml."""
    report = REPORTS / "checkov.json"
    argv = [
        "checkov",
        "--skip-download",
        "--quiet",
        "--compact",
        "-o",
        "json",
        "--config-file",
        ".checkov.yaml",
    ]
    for path in [*k8s_manifests, *dockerfiles, *ci_files]:
        argv += ["-f", path]
    proc = _run(argv, root)
    if proc.returncode not in (0, 1) or not proc.stdout.strip().startswith(("{", "[")):
        return ScanResult("checkov", "error", detail=(proc.stderr or proc.stdout).strip()[-200:])
    (root / report).write_text(proc.stdout)
    data = json.loads(proc.stdout)
    counts: Counter[str] = Counter()
    for block in data if isinstance(data, list) else [data]:
        for failed in block.get("results", {}).get("failed_checks", []):
            counts[(failed.get("severity") or "unrated").lower()] += 1
    return ScanResult("checkov", "findings" if counts else "clean", counts, str(report))


def render_overlays(root: Path) -> list[str]:
    """Each overlay as conveyor deploys it: through a kustomization that pins the image by digest."""
    out = []
    for overlay in sorted((root / "k8s/overlays").glob("*/kustomization.yaml")):
        folder = root / REPORTS / f"k8s-{overlay.parent.name}"
        folder.mkdir(parents=True, exist_ok=True)
        relative = Path("../../..") / overlay.parent.relative_to(root)
        (folder / "kustomization.yaml").write_text(
            f"resources: [{relative}]\nimages:\n  - name: conveyor-demo\n"
            f"    newName: registry.invalid/conveyor-demo\n    digest: sha256:{'0' * 64}\n"
        )
        rendered = _run(["kubectl", "kustomize", str(folder)], root)
        path = REPORTS / f"k8s-{overlay.parent.name}.yaml"
        (root / path).write_text(rendered.stdout)
        out.append(str(path))
    return out


def summary(results: list[ScanResult]) -> list[str]:
    rows = [f"{'scanner':<10} {'status':<11} {'findings by severity':<34} report"]
    for r in results:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "-"
        rows.append(f"{r.name:<10} {r.status.upper():<11} {counts:<34} {r.report}")
        if r.detail:
            rows.append(f"{'':<10} {r.detail}")
    return rows


def _write_record(root: Path, results: list[ScanResult]) -> None:
    """reports/security/record-<git sha>.json: what the promotion gate reads."""
    from datetime import datetime, timezone

    head = _run(["git", "rev-parse", "HEAD"], root).stdout.strip() or "unknown"
    dirty = bool(_run(["git", "status", "--porcelain"], root).stdout.strip())
    record = {
        "git_sha": head,
        "dirty": dirty,
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scanners": [{"name": r.name, "status": r.status, "counts": dict(r.counts)} for r in results],
    }
    (root / REPORTS / f"record-{head}.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.security", description=__doc__.splitlines()[0])
    parser.add_argument("--allow-unverified", action="store_true", help="exit 0 when a scanner is UNVERIFIED")
    parser.add_argument(
        "--only", default="", help="comma-separated scanners: bandit,pip-audit,hadolint,checkov"
    )
    args = parser.parse_args(argv)
    root = root or Path.cwd()
    (root / REPORTS).mkdir(parents=True, exist_ok=True)
    scanners: dict[str, Callable[[], ScanResult]] = {
        "bandit": lambda: bandit(root, ["src", "app"]),
        "pip-audit": lambda: pip_audit(root, "app/requirements.lock"),
        "hadolint": lambda: hadolint(root, [d for d in DOCKERFILES if (root / d).is_file()]),
        "checkov": lambda: checkov(
            root,
            render_overlays(root),
            [d for d in DOCKERFILES if (root / d).is_file()],
            [p for p in (".github/workflows/ci.yml", ".gitlab-ci.yml") if (root / p).is_file()],
        ),
    }
    chosen = [s for s in args.only.split(",") if s] or list(scanners)
    results = [scanners[name]() for name in chosen]
    if not args.only:  # a record is complete or it is not written
        _write_record(root, results)
    say = sys.stdout.write
    for line in summary(results):
        say(line + "\n")
    bad = [r.name for r in results if r.status in ("findings", "error")]
    unverified = [r.name for r in results if r.status == "unverified"]
    if bad:
        say(f"security: FAILED ({', '.join(bad)})\n")
        return 1
    if unverified and not args.allow_unverified:
        say(f"security: UNVERIFIED ({', '.join(unverified)}); pass --allow-unverified to accept that\n")
        return 1
    say("security: passed" + (f" (UNVERIFIED: {', '.join(unverified)})" if unverified else "") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
