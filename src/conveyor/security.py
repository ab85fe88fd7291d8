"""Security scanners behind `nox -s security`: bandit, pip-audit, hadolint, checkov, one summary table.

The scanners examine the project's own things, read from its configuration and its tree:

- bandit: ``security.paths`` (default: the packages pyproject.toml declares, else the project's package
  folders, ``src/*`` packages and top-level modules), test folders excluded;
- pip-audit: ``security.lock_files`` (default: ``requirements*.txt``/``requirements*.lock`` at the root or
  one level down);
- hadolint: every Dockerfile of the project (``Dockerfile``, ``*.Dockerfile``, ``Dockerfile.*``; git's
  files when the project is a git repository) and ``image.dockerfile``;
- checkov: the kustomize overlay of every ``target: k8s`` environment, rendered with its placeholder image
  (``k8s.image``) pinned by digest, the Dockerfiles and the generated CI files, under the project's
  ``.checkov.yaml`` or else the kit's default policy.

A scanner that could not do its job is never "clean". One that examined nothing (no files, no lines, no
package, no check run) is ERROR, naming what was empty and the key to set. pip-audit first audits a canary
pin with known advisories (jinja2==2.4.1): if its vulnerability service does not report those, the
service is unreachable or answering wrong, "no vulnerabilities" on our lock would mean nothing, and the
scan is UNVERIFIED.

Run: python -m conveyor.security [--allow-unverified] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from conveyor import config
from conveyor.errors import ConfigError, ConveyorError

REPORTS = Path("reports/security")
CANARY = "jinja2==2.4.1"  # has published advisories: a working service must report them
SCANNERS = ("bandit", "pip-audit", "hadolint", "checkov", "infra")  # infra: checkov on CloudFormation
CI_FILES = (".github/workflows/ci.yml", ".gitlab-ci.yml")
PROJECT_POLICIES = (".checkov.yaml", ".checkov.yml")
KIT_POLICY = "data/checkov.yaml"  # inside the conveyor package: checkov's policy when the project has none
DIGEST = "sha256:" + "0" * 64  # what the rendered overlays are pinned to (checkov wants digests)
# Never the project's own files: pruned when walking the tree, left out of git's untracked files.
SKIP_DIRS = frozenset(
    {".git", ".venv", "venv", ".nox", ".tox", "build", "node_modules", "__pycache__", ".mypy_cache"}
)
# Top-level folders that are not the product even when they hold an __init__.py.
NOT_PACKAGES = frozenset(
    {"tests", "test", "docs", "doc", "examples", "benchmarks", "dist", "env", "reports", *SKIP_DIRS}
)
# Dockerfile.* names that are not Dockerfiles: BuildKit's per-Dockerfile ignore list, documentation,
# templates (a generator's input does not parse; lint what it generates).
NOT_DOCKERFILES = (".dockerignore", ".md", ".rst", ".txt", ".tmpl", ".template", ".j2", ".jinja", ".jinja2")
# bandit: its own default exclusions (-x replaces them) plus test folders at any depth.
BANDIT_EXCLUDE = (".svn", "CVS", ".bzr", ".hg", ".git", "__pycache__", ".tox", ".nox", ".venv", ".eggs",
                  "*.egg", "*/tests/*", "tests/*")  # fmt: skip


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


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stderr or proc.stdout).strip()[-200:]


# --- what to scan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay:
    """A kustomize overlay an environment deploys, and the image name its manifests use as a placeholder."""

    env: str
    path: str  # from the project root
    image: str


@dataclass(frozen=True)
class Targets:
    """What each scanner examines (paths from the project root), and why a scanner cannot run at all."""

    code: tuple[str, ...] = ()
    lock_files: tuple[str, ...] = ()
    dockerfiles: tuple[str, ...] = ()
    overlays: tuple[Overlay, ...] = ()
    ci_files: tuple[str, ...] = ()
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # scanner -> reasons
    templates: tuple[str, ...] = ()  # CloudFormation templates as infra.up sends them (conveyor.infra)


def project_files(root: Path) -> list[str]:
    """The project's files, POSIX paths from the root. In a git repository: the tracked files, and the new
    ones git does not ignore (outside virtualenvs and build output, which a project may not ignore). Else
    a walk of the tree that skips virtualenvs, build output and VCS folders."""
    tracked = _run(["git", "ls-files", "-z", "--cached"], root)
    if tracked.returncode == 0:
        new = _run(["git", "ls-files", "-z", "--others", "--exclude-standard"], root).stdout.split("\0")
        paths = tracked.stdout.split("\0") + [p for p in new if SKIP_DIRS.isdisjoint(p.split("/"))]
        return sorted({p for p in paths if p and (root / p).is_file()})
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files]
    return sorted(found)


def is_dockerfile(path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    if name.endswith(NOT_DOCKERFILES):
        return False
    return name == "dockerfile" or name.endswith(".dockerfile") or name.startswith("dockerfile.")


def find_dockerfiles(files: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(f for f in files if is_dockerfile(f)))


def find_lock_files(files: Iterable[str]) -> tuple[str, ...]:
    """``requirements*.txt``/``requirements*.lock`` at the root or one folder down, ``requirements/*.txt``."""
    out = []
    for f in files:
        path = PurePosixPath(f)
        if len(path.parts) > 2:
            continue
        named = fnmatch(path.name, "requirements*.txt") or fnmatch(path.name, "requirements*.lock")
        if named or (path.parent.as_posix() == "requirements" and path.suffix == ".txt"):
            out.append(f)
    return tuple(sorted(out))


def _is_test_module(name: str) -> bool:
    return name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py")


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _strings(val: Any) -> list[str]:
    return [str(v) for v in val] if isinstance(val, list) else []


def declared_packages(root: Path) -> tuple[str, ...]:
    """The folders of the top-level packages (and the modules) setuptools builds, per pyproject.toml:
    ``[tool.setuptools] packages``/``py-modules``/``package-dir`` or ``[tool.setuptools.packages.find]``.
    Empty when pyproject.toml declares none (other backends, setuptools' automatic discovery)."""
    tool = config.read_pyproject(root).get("tool", {})
    setuptools = tool.get("setuptools", {}) if isinstance(tool, dict) else {}
    if not isinstance(setuptools, dict):
        return ()
    package_dir = setuptools.get("package-dir") or {}
    package_dir = package_dir if isinstance(package_dir, dict) else {}
    base = str(package_dir.get("", ""))
    out: list[str] = []

    def add(path: str) -> None:
        path = PurePosixPath(path).as_posix()
        if path not in out:
            out.append(path)

    packages = setuptools.get("packages")
    if isinstance(packages, list):
        for name in _strings(packages):
            top = name.split(".")[0]
            add(str(package_dir[top]) if top in package_dir else str(PurePosixPath(base or ".", top)))
    elif isinstance(packages, dict) and isinstance(packages.get("find"), dict):
        find = packages["find"]
        include = [p.split(".")[0] for p in _strings(find.get("include"))] or ["*"]
        exclude = _strings(find.get("exclude"))
        namespaces = find.get("namespaces", True) is not False
        for where in _strings(find.get("where")) or ["."]:
            folder = root / where
            if not folder.is_dir():
                continue
            for child in sorted(folder.iterdir()):
                name = child.name
                if not child.is_dir() or _hidden(name) or name in NOT_PACKAGES:
                    continue
                if not any(fnmatch(name, p) for p in include) or any(fnmatch(name, p) for p in exclude):
                    continue
                if (child / "__init__.py").is_file() or (namespaces and any(child.rglob("*.py"))):
                    add(child.relative_to(root).as_posix())
    for module in _strings(setuptools.get("py-modules")):
        add(str(PurePosixPath(base or ".", *module.split("."))) + ".py")
    return tuple(out)


def discovered_code(root: Path) -> tuple[str, ...]:
    """Top-level folders and ``src/*`` folders holding an ``__init__.py``, and top-level modules
    (``app.py``, ``manage.py``), test and documentation folders left out."""
    out: list[str] = []
    for folder, prefix in ((root, ""), (root / "src", "src/")):
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            name = child.name
            if _hidden(name) or name in NOT_PACKAGES:
                continue
            package = child.is_dir() and (child / "__init__.py").is_file()
            module = child.is_file() and name.endswith(".py") and not _is_test_module(name)
            if package or module:
                out.append(prefix + name)
    return tuple(out)


def default_code(root: Path) -> tuple[str, ...]:
    """What bandit scans when ``security.paths`` is empty."""
    return declared_packages(root) or discovered_code(root)


def check_paths(root: Path, paths: Sequence[str], key: str, source: str) -> list[str]:
    """One problem per configured path that does not exist or lies outside the project."""
    problems = []
    top = root.resolve()
    for path in paths:
        full = (root / path).resolve()
        if full != top and top not in full.parents:
            problems.append(f"{key} ({source}): `{path}` is outside the project")
        elif not full.exists():
            problems.append(f"{key} ({source}): `{path}` does not exist")
    return problems


def deployed_overlays(root: Path, environ: Mapping[str, str]) -> tuple[list[Overlay], list[str]]:
    """The overlay of every ``target: k8s`` environment; an environment that does not load is a problem."""
    overlays: list[Overlay] = []
    problems: list[str] = []
    for name in config.list_environments(root):
        try:
            cfg = config.load(root, name, environ=environ)
        except ConveyorError as exc:
            problems.append(f"environment `{name}` does not load: {exc}")
            continue
        if cfg.env.target != "k8s":
            continue
        overlay = Overlay(name, PurePosixPath(cfg.env.k8s.overlay).as_posix(), cfg.env.k8s.image)
        if not (root / overlay.path / "kustomization.yaml").is_file():
            problems.append(f"environment `{name}`: k8s.overlay `{overlay.path}` has no kustomization.yaml")
        elif all((o.path, o.image) != (overlay.path, overlay.image) for o in overlays):
            overlays.append(overlay)
    return overlays, problems


def resolve_targets(root: Path, environ: Mapping[str, str]) -> Targets:
    """Everything the scanners examine, from the project's configuration and files."""
    files = project_files(root)
    problems: dict[str, list[str]] = {name: [] for name in SCANNERS}
    code: tuple[str, ...] = ()
    locks: tuple[str, ...] = ()
    dockerfiles = set(find_dockerfiles(files))
    try:
        cfg = config.load(root, None, environ=environ)
    except ConveyorError as exc:
        problems["bandit"].append(f"configuration: {exc}")
        problems["pip-audit"].append(f"configuration: {exc}")
    else:
        if cfg.security.paths:
            code = cfg.security.paths
            source = cfg.values["security.paths"].source
            problems["bandit"] += check_paths(root, code, "security.paths", source)
        else:
            try:
                code = default_code(root)
            except ConfigError as exc:
                problems["bandit"].append(str(exc))
        locks = cfg.security.lock_files or find_lock_files(files)
        if cfg.security.lock_files:
            source = cfg.values["security.lock_files"].source
            problems["pip-audit"] += check_paths(root, locks, "security.lock_files", source)
        if (root / cfg.image.dockerfile).is_file():
            dockerfiles.add(PurePosixPath(cfg.image.dockerfile).as_posix())
    overlays, env_problems = deployed_overlays(root, environ)
    problems["checkov"] += env_problems
    templates, problems["infra"] = infra_templates(root, environ)
    return Targets(
        code=code,
        lock_files=locks,
        dockerfiles=tuple(sorted(dockerfiles)),
        overlays=tuple(overlays),
        ci_files=tuple(p for p in CI_FILES if (root / p).is_file()),
        problems={k: tuple(v) for k, v in problems.items() if v},
        templates=tuple(templates),
    )


def infra_templates(root: Path, environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Each environment's CloudFormation template (``infra.template``, when the file exists), expanded
    with its parameters as ``infra.up`` sends it; a template that does not render is a problem."""
    from conveyor import infra

    out: list[str] = []
    problems: list[str] = []
    for cfg in infra.iter_templates(root, environ):
        try:
            rendered = infra.render(cfg)
        except ConveyorError as exc:
            problems.append(f"environment `{cfg.env.name}`: {exc}")
            continue
        out.append(rendered.path.relative_to(root).as_posix())
    return out, problems


# --- the scanners ------------------------------------------------------------------------------------


def bandit(root: Path, targets: Sequence[str]) -> ScanResult:
    report = REPORTS / "bandit.json"
    if not targets:
        detail = "found no Python package or module to scan: set security.paths"
        return ScanResult("bandit", "error", report=str(report), detail=detail)
    settings = ["-c", "pyproject.toml"] if (root / "pyproject.toml").is_file() else []
    argv = ["bandit", "-q", *settings, "-r", *targets, "-x", ",".join(BANDIT_EXCLUDE),
            "-f", "json", "-o", str(report)]  # fmt: skip
    (root / report).unlink(missing_ok=True)
    proc = _run(argv, root)
    if proc.returncode not in (0, 1) or not (root / report).is_file():
        return ScanResult("bandit", "error", report=str(report), detail=_tail(proc))
    data = json.loads((root / report).read_text())
    errors = data.get("errors") or []
    if errors:
        first = errors[0]
        detail = f"could not scan {len(errors)} file(s): {first.get('filename')}: {first.get('reason')}"
        return ScanResult("bandit", "error", report=str(report), detail=detail)
    metrics = data.get("metrics") or {}
    scanned = [name for name in metrics if name != "_totals"]
    lines = (metrics.get("_totals") or {}).get("loc", 0)
    if not scanned or not lines:
        detail = (
            f"scanned {len(scanned)} file(s), {lines} line(s) of Python in {', '.join(targets)}: "
            "set security.paths to the project's code"
        )
        return ScanResult("bandit", "error", report=str(report), detail=detail)
    counts = Counter(r["issue_severity"].lower() for r in data.get("results", []))
    return ScanResult("bandit", "findings" if counts else "clean", counts, str(report))


def pip_audit(root: Path, lock_files: Sequence[str]) -> ScanResult:
    report = REPORTS / "pip-audit.json"
    if not lock_files:
        return ScanResult("pip-audit", "error", detail="no lock files: set security.lock_files")
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
    (root / report).unlink(missing_ok=True)
    requirements = [arg for lock in lock_files for arg in ("-r", lock)]
    proc = _run([*common, *requirements, "-o", str(report)], root)
    if not (root / report).is_file():  # the service answered the canary: the failure is ours
        return ScanResult("pip-audit", "error", report=str(report), detail=_tail(proc))
    data = json.loads((root / report).read_text())
    dependencies = data.get("dependencies", [])
    if not dependencies:
        detail = f"no packages in {', '.join(lock_files)}: set security.lock_files to pinned requirements"
        return ScanResult("pip-audit", "error", report=str(report), detail=detail)
    skipped = [d["name"] for d in dependencies if d.get("skip_reason")]
    counts = Counter("unrated" for d in dependencies for _ in d.get("vulns", []))
    if skipped:
        return ScanResult(
            "pip-audit", "unverified", counts, str(report), f"not audited: {', '.join(skipped)}"
        )
    return ScanResult("pip-audit", "findings" if counts else "clean", counts, str(report))


def hadolint(root: Path, dockerfiles: Sequence[str]) -> ScanResult:
    report = REPORTS / "hadolint.json"
    if not dockerfiles:
        detail = "no Dockerfile in the project (Dockerfile, *.Dockerfile, Dockerfile.*): set image.dockerfile"
        return ScanResult("hadolint", "error", detail=detail)
    proc = _run(["hadolint", "--failure-threshold", "warning", "-f", "json", *dockerfiles], root)
    if proc.returncode == 127 or not proc.stdout.startswith("["):
        return ScanResult("hadolint", "error", detail=_tail(proc))
    (root / report).write_text(proc.stdout)
    counts = Counter(item["level"] for item in json.loads(proc.stdout))
    failing = counts["error"] + counts["warning"]
    return ScanResult("hadolint", "findings" if failing else "clean", counts, str(report))


@contextmanager
def checkov_policy(root: Path) -> Iterator[Path]:
    """The project's .checkov.yaml, else the kit's default policy shipped in the package."""
    for name in PROJECT_POLICIES:
        if (root / name).is_file():
            yield root / name
            return
    from importlib.resources import as_file, files

    with as_file(files("conveyor").joinpath(KIT_POLICY)) as path:
        yield path


def checkov(
    root: Path, files: Sequence[str], policy: Path | None = None, *, name: str = "checkov"
) -> ScanResult:
    """Offline (--skip-download); the reasoned skips live in the policy (see checkov_policy)."""
    report = REPORTS / ("checkov.json" if name == "checkov" else f"checkov-{name}.json")
    if not files:
        detail = (
            "nothing to scan: no Dockerfile, no generated CI file and no environment with target: k8s "
            "(k8s.overlay)"
            if name == "checkov"
            else "nothing to scan: no environment's CloudFormation template exists (infra.template)"
        )
        return ScanResult(name, "error", detail=detail)
    with checkov_policy(root) if policy is None else nullcontext(policy) as config_file:
        argv = ["checkov", "--skip-download", "--quiet", "--compact", "-o", "json",
                "--config-file", str(config_file)]  # fmt: skip
        for path in files:
            argv += ["-f", path]
        proc = _run(argv, root)
    if proc.returncode not in (0, 1) or not proc.stdout.strip().startswith(("{", "[")):
        return ScanResult(name, "error", detail=_tail(proc))
    (root / report).write_text(proc.stdout)
    data = json.loads(proc.stdout)
    counts: Counter[str] = Counter()
    checks = 0
    for block in data if isinstance(data, list) else [data]:
        totals = block.get("summary", block)  # one framework and nothing found: the summary alone
        checks += int(totals.get("passed", 0)) + int(totals.get("failed", 0))
        for failed in block.get("results", {}).get("failed_checks", []):
            counts[(failed.get("severity") or "unrated").lower()] += 1
    if checks == 0:
        detail = f"ran 0 checks on {', '.join(files)}: checkov recognised none of them"
        return ScanResult(name, "error", report=str(report), detail=detail)
    return ScanResult(name, "findings" if counts else "clean", counts, str(report))


def wrapper_kustomization(overlay: Overlay, folder: str) -> str:
    """A kustomization in ``folder`` (from the root) deploying ``overlay`` with its image pinned by digest.

    kustomize refuses absolute roots, so the overlay is referenced by a relative path."""
    name = overlay.image.split("@")[0]
    head, _, last = name.rpartition("/")
    name = f"{head}/{last.split(':')[0]}" if head else last.split(":")[0]  # kustomize matches untagged names
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [Path(os.path.relpath(overlay.path, folder)).as_posix()],
        "images": [
            {"name": name, "newName": f"registry.invalid/{name.rsplit('/', 1)[-1]}", "digest": DIGEST}
        ],
    }
    return "# GENERATED by conveyor.security; do not edit.\n" + yaml.safe_dump(kustomization, sort_keys=False)


def render_overlays(root: Path, overlays: Sequence[Overlay]) -> tuple[list[str], list[str]]:
    """Each overlay as conveyor deploys it (image by digest), rendered to a file checkov reads.

    Returns the rendered files and the problems (a render that failed, a placeholder no container uses)."""
    out: list[str] = []
    problems: list[str] = []
    for overlay in overlays:
        folder = REPORTS / f"k8s-{overlay.env}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "kustomization.yaml").write_text(wrapper_kustomization(overlay, folder.as_posix()))
        rendered = _run(["kubectl", "kustomize", folder.as_posix()], root)
        if rendered.returncode != 0:
            problems.append(f"environment `{overlay.env}`: kustomize {overlay.path}: {_tail(rendered)}")
            continue
        if f"@{DIGEST}" not in rendered.stdout:
            problems.append(
                f"environment `{overlay.env}`: no container in {overlay.path} uses the image "
                f"`{overlay.image}`: set k8s.image to the image name the manifests use"
            )
            continue
        path = REPORTS / f"k8s-{overlay.env}.yaml"
        (root / path).write_text(rendered.stdout)
        out.append(path.as_posix())
    return out, problems


def _checkov_targets(root: Path, targets: Targets) -> ScanResult:
    manifests, problems = render_overlays(root, targets.overlays)
    if problems:
        return ScanResult("checkov", "error", detail="; ".join(problems))
    return checkov(root, [*manifests, *targets.dockerfiles, *targets.ci_files])


# --- the run -----------------------------------------------------------------------------------------


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


def main(
    argv: list[str] | None = None, root: Path | None = None, environ: Mapping[str, str] | None = None
) -> int:
    parser = argparse.ArgumentParser(prog="python -m conveyor.security", description=__doc__.splitlines()[0])
    parser.add_argument("--allow-unverified", action="store_true", help="exit 0 when a scanner is UNVERIFIED")
    parser.add_argument("--only", default="", help=f"comma-separated scanners: {','.join(SCANNERS)}")
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or list(SCANNERS)
    unknown = [s for s in chosen if s not in SCANNERS]
    if unknown:
        parser.error(f"--only: unknown scanner {unknown[0]!r} (known: {', '.join(SCANNERS)})")
    root = root or Path.cwd()
    (root / REPORTS).mkdir(parents=True, exist_ok=True)
    targets = resolve_targets(root, os.environ if environ is None else environ)
    if not args.only and not targets.templates and "infra" not in targets.problems:
        chosen.remove("infra")  # a project without a CloudFormation template has no infra row
    scanners: dict[str, Callable[[], ScanResult]] = {
        "bandit": lambda: bandit(root, targets.code),
        "pip-audit": lambda: pip_audit(root, targets.lock_files),
        "hadolint": lambda: hadolint(root, targets.dockerfiles),
        "checkov": lambda: _checkov_targets(root, targets),
        "infra": lambda: checkov(root, targets.templates, name="infra"),
    }

    def scan(name: str) -> ScanResult:
        problems = targets.problems.get(name)
        return ScanResult(name, "error", detail="; ".join(problems)) if problems else scanners[name]()

    results = [scan(name) for name in chosen]
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
