"""The files ``conveyor init`` writes, rendered from the templates in package data.

``render(detected)`` is pure: it returns relative path -> text. ``apply`` compares that with the disk and
writes only what is missing (or, with ``force``, what differs); ``diff`` shows the same without writing.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from conveyor.errors import ConveyorError
from conveyor.init.detect import HTTP_PROCESS as WEB
from conveyor.init.detect import PORT, Detected

PLACEHOLDER = re.compile(r"\{\{ ([a-z_]+) \}\}")
CI_INSTALL = "python -m pip install conveyor"  # how CI jobs get the kit (with invoke and nox)
ENVIRONMENTS = ("local", "staging", "production")


def template(name: str) -> str:
    found = resources.files("conveyor") / "templates"
    for part in name.split("/"):
        found = found / part
    return found.read_text(encoding="utf-8")


def fill(name: str, values: Mapping[str, str]) -> str:
    """The template ``name`` with every ``{{ key }}`` replaced; an unknown key is a bug, not a blank."""

    def sub(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return PLACEHOLDER.sub(sub, template(name))


def _flow(items: tuple[str, ...] | list[str]) -> str:
    """A YAML flow sequence of strings (JSON strings are valid YAML)."""
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _py_list(name: str, items: list[str]) -> str:
    """``NAME = [...]`` as ruff format writes it (88 columns): one line, or one item per line."""
    line = f"{name} = {json.dumps(items)}"
    if len(line) <= 88:
        return line
    return f"{name} = [\n" + "".join(f"    {json.dumps(i)},\n" for i in items) + "]"


def _processes(det: Detected) -> str:
    lines = [
        f"    {WEB}:",
        f"      command: {_flow(det.command)}",
        f"      port: {PORT}",
        f"      health: {det.health or '/health'}",
        f"      version: {det.version or 'none'}",
    ]
    if det.version:
        lines.append(f"      version_field: {det.version_field}")
    for proc in det.processes:
        lines += [f"    {proc.name}:", f"      command: {_flow(proc.command)}"]
    return "\n".join(lines)


def _secrets(det: Detected, env: str) -> str:
    if not det.secrets:
        return " {}"

    def ref(secret: str) -> str:
        return f"env:{secret}" if env == "local" else f"aws-sm:{det.name}/{env}#{secret.lower()}"

    return "".join(f"\n  {s}: {ref(s)}" for s in det.secrets)


def names(det: Detected) -> dict[str, str]:
    """Names derived once: k8s objects per process, namespaces."""
    return {WEB: f"{det.name}-{WEB}", **{p.name: f"{det.name}-{p.name}" for p in det.processes}}


def render(det: Detected, *, branch: str = "main") -> dict[str, str]:
    """Every file ``conveyor init`` would write (CI files excluded: see ``render_ci``)."""
    project = det.name
    health = det.health or "/health"
    install = (
        fill("install-requirements.tmpl", {"requirements": det.requirements})
        if det.install == "requirements"
        else template(f"install-{det.install}.tmpl")
    )
    files: dict[str, str] = {}
    files["Dockerfile"] = fill(
        "Dockerfile.tmpl",
        {
            "project": project,
            "install": install,
            "pythonpath": " \\\n    PYTHONPATH=/srv/app/src"
            if det.src_layout and det.install != "package"  # the code is copied, not installed
            else "",
            "port": str(PORT),
            "health": health,
            "command": json.dumps(list(det.command)),
        },
    )
    files[".dockerignore"] = template("dockerignore.tmpl")
    files[".gitignore"] = template("gitignore.tmpl")
    files["tasks.py"] = fill("tasks.py.tmpl", {"project": project})
    nox_install = ["-r", det.requirements] if det.install == "requirements" else ["-e", "."]
    files["noxfile.py"] = fill(
        "noxfile.py.tmpl",
        {
            "project": project,
            "install": _py_list("INSTALL", nox_install),
            "lint_paths": _py_list(
                "LINT_PATHS", [p for p in det.packages if p != "."] + ["tasks.py", "noxfile.py"]
            ),
        },
    )
    release = ""
    if det.release:
        release = f"  release:\n    command: {_flow(det.release)}\n"
    lock_files = ""
    if det.install == "requirements" and (det.root / det.requirements).is_file():
        lock_files = f"    lock_files: {_flow([det.requirements])}\n"
    ci_python = "3.12" if not det.pythons or "3.12" in det.pythons else det.pythons[-1]
    files["invoke.yaml"] = fill(
        "invoke.yaml.tmpl",
        {
            "project": project,
            "processes": _processes(det),
            "release": release,
            "security_paths": _flow(det.packages),
            "lock_files": lock_files,
            "ci_install": json.dumps(CI_INSTALL),
            "branch": branch,
            "ci_python": ci_python,
        },
    )
    for env in ENVIRONMENTS:
        files[f"deploy/environments/{env}.yaml"] = fill(
            f"environment-{env}.yaml.tmpl", {"project": project, "secrets": _secrets(det, env)}
        )
    services = [fill("compose/http-service.tmpl", {"name": WEB, "port": str(PORT), "health": health})]
    services += [fill("compose/process-service.tmpl", {"name": p.name}) for p in det.processes]
    files["compose/compose.yaml"] = fill(
        "compose/compose.yaml.tmpl",
        {"project": project, "http_process": WEB, "services": "\n".join(services).rstrip("\n")},
    )
    files.update(_k8s(det))
    # The HTTP healthCheck is dropped from the other processes' task definitions when they are rendered.
    healthcheck = fill("taskdef-healthcheck.tmpl", {"port": str(PORT), "health": health})
    files["deploy/ecs/taskdef.yaml"] = fill(
        "taskdef.yaml.tmpl", {"project": project, "port": str(PORT), "healthcheck": healthcheck}
    )
    files["deploy/cloudformation/stack.yaml"] = template("cloudformation/stack.yaml")  # static: parameters
    files["ci/pipeline.yaml"] = fill(
        "pipeline.yaml.tmpl", {"project": project, "matrix": "\n    matrix: python" if det.pythons else ""}
    )
    files["monitoring/rules/service.yaml"] = monitoring_rules(det)
    return files


def monitoring_rules(det: Detected) -> str:
    """Prometheus rules for the project's processes, one scrape job per process (promtool-checked)."""
    workers = [p.name for p in det.processes]
    worker_jobs = "|".join(workers)
    values = {
        "project": det.name,
        "http_job": WEB,
        "jobs": "|".join([WEB, *workers]),
        "worker_metric": fill("monitoring/worker-metric.tmpl", {"worker_jobs": worker_jobs})
        if workers
        else "",
        "worker_recording": fill("monitoring/worker-recording.tmpl", {"worker_jobs": worker_jobs})
        if workers
        else "",
        "worker_alerts": template("monitoring/worker-alerts.tmpl") if workers else "",
    }
    return fill("monitoring/rules.yaml.tmpl", values).rstrip("\n") + "\n"


def _k8s(det: Detected) -> dict[str, str]:
    files: dict[str, str] = {}
    objects = names(det)
    http = fill("k8s/http-container.tmpl", {"port": str(PORT), "health": det.health or "/health"})
    resources_list = []
    for process in [WEB, *(p.name for p in det.processes)]:
        rel = f"deployment-{process}.yaml"
        resources_list.append(rel)
        files[f"k8s/base/{rel}"] = fill(
            "k8s/deployment.yaml.tmpl",
            {
                "project": det.name,
                "process": process,
                "object": objects[process],
                "replicas": "2" if process == WEB else "1",
                "image": det.name,
                "http": http if process == WEB else "",
            },
        )
    resources_list.append("service.yaml")
    files["k8s/base/service.yaml"] = fill("k8s/service.yaml.tmpl", {"project": det.name, "process": WEB})
    files["k8s/base/kustomization.yaml"] = fill(
        "k8s/kustomization.yaml.tmpl",
        {"project": det.name, "resources": "\n".join(f"  - {r}" for r in resources_list)},
    )
    for env in ("staging", "production"):
        files[f"k8s/overlays/{env}/kustomization.yaml"] = fill(
            "k8s/overlay.yaml.tmpl", {"project": det.name, "env": env, "namespace": f"{det.name}-{env}"}
        )
    return files


def render_ci(root: Path, files: Mapping[str, str], *, branch: str) -> dict[str, str]:
    """The GitHub and GitLab CI files, rendered by conveyor.pipeline from the config as it will be on disk:
    the files this run writes, else those already there. ``branch`` is the one ``render`` was given."""
    from conveyor import config, pipeline
    from conveyor.doctor import python_versions
    from conveyor.tasks import task_names

    needed = ["invoke.yaml", "pyproject.toml", "ci/pipeline.yaml"]
    needed += [f"deploy/environments/{env}.yaml" for env in ENVIRONMENTS]
    with tempfile.TemporaryDirectory(prefix="conveyor-init-") as tmp:
        scratch = Path(tmp)
        for rel in needed:
            dest = scratch / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in files:
                dest.write_text(files[rel], encoding="utf-8")
            elif (root / rel).is_file():
                shutil.copyfile(root / rel, dest)
        cfg = config.load(scratch, "local", environ={})
        pipe = pipeline.load(scratch / pipeline.PIPELINE_FILE, task_names())
        pythons = python_versions(scratch / "pyproject.toml")
        envs = pipeline.environment_access(scratch, pipe)
    rendered = {
        str(pipeline.GITHUB_FILE): pipeline.render_github(pipe, pythons, cfg.ci, branch, envs),
        str(pipeline.GITLAB_FILE): pipeline.render_gitlab(pipe, pythons, cfg.ci, envs),
    }
    dind = pipeline.render_gitlab_dind(pipe, cfg.ci)
    if dind is not None:
        rendered[str(pipeline.GITLAB_DIND_FILE)] = dind
    return rendered


# --- comparing with the disk and writing -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    written: tuple[str, ...]
    skipped: tuple[str, ...]  # exists with other content
    unchanged: tuple[str, ...]


def _existing(root: Path, rel: str) -> str | None:
    path = root / rel
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConveyorError(f"{rel}: cannot read it: {exc.strerror or exc}") from None


def changes(root: Path, files: Mapping[str, str], *, force: bool) -> dict[str, str | None]:
    """rel -> current text (None when absent) for every file a run would write."""
    out: dict[str, str | None] = {}
    for rel, text in files.items():
        current = _existing(root, rel)
        if current is None or (force and current != text):
            out[rel] = current
    return out


def diff(root: Path, files: Mapping[str, str], *, force: bool) -> str:
    chunks: list[str] = []
    for rel, current in changes(root, files, force=force).items():
        before = current.splitlines(keepends=True) if current is not None else []
        chunks += difflib.unified_diff(
            before,
            files[rel].splitlines(keepends=True),
            f"a/{rel}" if current is not None else "/dev/null",
            f"b/{rel}",
        )
    return "".join(chunks)


def apply(root: Path, files: Mapping[str, str], *, force: bool) -> Outcome:
    todo = changes(root, files, force=force)
    written: list[str] = []
    skipped: list[str] = []
    unchanged: list[str] = []
    for rel, text in files.items():
        if rel in todo:
            path = root / rel
            if path.is_symlink() or (path.exists() and not path.is_file()):
                skipped.append(rel)
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            except OSError as exc:
                done = f" (wrote {', '.join(written)} before it)" if written else ""
                raise ConveyorError(f"{rel}: cannot write it: {exc.strerror or exc}{done}") from None
            written.append(rel)
        elif _existing(root, rel) == text:
            unchanged.append(rel)
        else:
            skipped.append(rel)
    return Outcome(tuple(written), tuple(skipped), tuple(unchanged))


def shell_line(argv: tuple[str, ...]) -> str:
    return shlex.join(argv)
