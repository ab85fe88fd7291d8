"""Read an existing project and tell what it is: framework, entry point, server, routes, processes.

Pure reading: the project's Python files (parsed with ``ast``, never imported), its dependencies
(``requirements*.txt``, ``pyproject.toml``) and, when present, a ``Procfile``. Nothing is executed.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor import config
from conveyor.config import PROCESS_NAME, SCHEMA
from conveyor.errors import ConveyorError

# The HTTP process's name and port are the kit's defaults (SCHEMA), which init writes out explicitly.
HTTP_PROCESS, _HTTP = next(iter(SCHEMA["processes"].default.items()))
PORT = int(_HTTP["port"])
SKIP_DIRS = {
    "venv", "env", "node_modules", "build", "dist", "site-packages", "__pycache__", "tests", "test",
    "migrations", "docs", "k8s", "deploy", "compose", "ci",
}  # fmt: skip
MAX_FILES = 5000
MAX_BYTES = 1_000_000
HEALTH = re.compile(r"^/?(health|healthz|_health|healthcheck|livez|ping)/?$")
VERSION = re.compile(r"^/?(version|_version|__version__)/?$")
VERSION_FIELDS = ("git_sha", "git_commit", "commit", "revision", "sha")
# Where a route path is written: the first argument of a route decorator (``@app.get("/x")``,
# ``@bp.route("/x")``, ``@router.api_route``), of a registering call (``app.add_url_rule("/x", ...)``) or
# of a route object (Starlette ``Route("/x", ...)``, Django ``path("x", ...)`` / ``re_path(r"^x$", ...)``).
ROUTE_DECORATORS = frozenset(
    {"get", "head", "post", "put", "patch", "delete", "options", "route", "api_route"}
)
ROUTE_CALLS = frozenset({"add_url_rule", "add_api_route", "add_route", "Route", "path", "re_path"})
ROUTE_KEYWORDS = ("path", "rule")
# The app classes we recognise: class name -> (framework, the module it must be imported from).
APP_CLASSES = {
    "FastAPI": ("fastapi", "fastapi"),
    "Starlette": ("starlette", "starlette"),
    "Flask": ("flask", "flask"),
}
FACTORY_NAMES = ("create_app", "make_app", "get_app", "build_app", "app_factory")
# Framework conventions (the Flask, FastAPI and Django docs): where an app usually lives, what it is called.
PREFERRED_MODULE = re.compile(r"^(main|app|application|asgi|wsgi|server|api|web)$")
APP_VARIABLE = re.compile(r"^app(lication)?$")
DJANGO_RELEASE = tuple(shlex.split("python manage.py migrate --noinput"))
CELERY_WORKER = "celery -A {module} worker --loglevel INFO"
LOOKED_FOR = (
    "manage.py (Django), a FastAPI or Starlette app (ASGI) or a Flask app (WSGI) assigned at module level "
    "or returned by create_app()"
)


class NotDetected(ConveyorError):
    """No framework conveyor knows was found: nothing is written."""

    exit_code = 2


@dataclass(frozen=True)
class ExtraProcess:
    name: str
    command: tuple[str, ...]
    source: str  # where it came from: "Procfile", "celery"


@dataclass(frozen=True)
class Detected:
    """What ``conveyor init`` learned about a project."""

    root: Path
    name: str  # project / image name
    framework: str  # fastapi | starlette | flask | django
    entry: str  # module:attr, module:factory() or <project>.wsgi:application
    server: str  # uvicorn | gunicorn
    command: tuple[str, ...]  # the HTTP process
    release: tuple[str, ...] = ()
    health: str = ""  # "" when the code has none
    version: str = ""
    version_field: str = "git_sha"
    app_file: str = ""  # where the app (Django: urls.py) lives, for the "add this" hints
    processes: tuple[ExtraProcess, ...] = ()
    # requirements: pip install -r the requirements file; pyproject: the [project] dependencies only (the
    # code is copied, not installed); package: pip install . (Poetry-only or dynamic dependencies).
    install: str = "requirements"
    requirements: str = "requirements.txt"
    packages: tuple[str, ...] = ()  # what bandit scans
    pythons: tuple[str, ...] = ()  # declared by pyproject classifiers
    src_layout: bool = False
    dependencies: frozenset[str] = frozenset()
    missing: tuple[str, ...] = ()  # dependencies to add, with why
    notes: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=())

    @property
    def describe(self) -> str:
        names = {"fastapi": "FastAPI", "starlette": "Starlette", "flask": "Flask", "django": "Django"}
        return f"{names[self.framework]} app `{self.entry}` served by {self.server} on port {PORT}"


# --- dependencies --------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(lines: list[str]) -> set[str]:
    """Distribution names from requirement lines (options, comments, URLs and -r includes skipped)."""
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "://" in line.split(";")[0].split("@")[0]:
            continue
        match = _REQ_NAME.match(line)
        if match:
            names.add(normalize(match.group(1)))
    return names


def read_text(path: Path, root: Path, *, errors: str = "strict") -> str:
    """A project file's text; unreadable or not UTF-8 is NotDetected naming the file (one line, exit 2)."""
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise NotDetected(f"{rel}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise NotDetected(f"{rel}: cannot read it: {exc.strerror or exc}") from None


def read_pyproject(root: Path) -> dict[str, Any]:
    try:
        return config.read_pyproject(root)
    except ConveyorError as exc:
        raise NotDetected(str(exc)) from None


def dependencies(root: Path, pyproject: dict[str, Any]) -> set[str]:
    """Every dependency the project declares anywhere (runtime, extras, dev groups, requirements files)."""
    lines: list[str] = []
    for path in sorted({*root.glob("requirements*.txt"), *root.glob("requirements/*.txt")}):
        lines += read_text(path, root, errors="replace").splitlines()
    project = pyproject.get("project") or {}
    lines += [str(d) for d in project.get("dependencies") or []]
    for extra in (project.get("optional-dependencies") or {}).values():
        lines += [str(d) for d in extra]
    for group in (pyproject.get("dependency-groups") or {}).values():
        lines += [d for d in group if isinstance(d, str)]
    names = requirement_names(lines)
    poetry = (pyproject.get("tool") or {}).get("poetry") or {}
    names |= {normalize(k) for k in (poetry.get("dependencies") or {}) if k != "python"}
    return names


# --- Python sources ------------------------------------------------------------------------------------


@dataclass
class Module:
    path: Path
    rel: str  # path from the project root
    module: str  # dotted import path
    tree: ast.Module
    strings: list[str]
    routes: list[str]  # route paths, in source order (see ``route_paths``)


def python_files(root: Path) -> Iterator[Path]:
    count = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith(".") and entry.name not in SKIP_DIRS:
                    stack.append(entry)
            elif entry.suffix == ".py" and entry.name not in ("setup.py", "noxfile.py", "tasks.py"):
                count += 1
                if count > MAX_FILES:
                    return
                yield entry


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts and parts[0] == "src":
        parts = parts[1:]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def parse_modules(root: Path) -> list[Module]:
    modules = []
    for path in python_files(root):
        try:
            if path.stat().st_size > MAX_BYTES:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        rel = path.relative_to(root)
        strings = [
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        modules.append(Module(path, rel.as_posix(), module_name(rel), tree, strings, route_paths(tree)))
    return modules


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> the top-level module it was imported from (``from flask import Flask`` -> flask)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = node.module.split(".")[0]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
    return names


def _app_class(call: ast.expr, imports: dict[str, str]) -> str:
    """The framework a call like ``Flask(__name__)`` / ``fastapi.FastAPI()`` builds, or ''."""
    if not isinstance(call, ast.Call):
        return ""
    func = call.func
    if isinstance(func, ast.Name) and func.id in APP_CLASSES:
        framework, module = APP_CLASSES[func.id]
        return framework if imports.get(func.id) == module else ""
    if isinstance(func, ast.Attribute) and func.attr in APP_CLASSES and isinstance(func.value, ast.Name):
        framework, module = APP_CLASSES[func.attr]
        return framework if imports.get(func.value.id) == module else ""
    return ""


@dataclass(frozen=True)
class Candidate:
    framework: str
    module: str
    attr: str
    factory: bool
    rel: str

    def rank(self) -> tuple[int, int, int, int]:
        leaf = self.module.rsplit(".", 1)[-1]
        return (
            int(self.factory),
            0 if APP_VARIABLE.match(self.attr) else 1,
            0 if PREFERRED_MODULE.match(leaf) else 1,
            self.module.count("."),
        )


def app_candidates(modules: list[Module]) -> list[Candidate]:
    found = []
    for mod in modules:
        imports = _imports(mod.tree)
        for node in mod.tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            if value is not None:
                framework = _app_class(value, imports)
                for target in targets:
                    if framework and isinstance(target, ast.Name):
                        found.append(Candidate(framework, mod.module, target.id, False, mod.rel))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in FACTORY_NAMES:
                for inner in ast.walk(node):
                    framework = _app_class(inner, imports) if isinstance(inner, ast.Call) else ""
                    if framework:
                        found.append(Candidate(framework, mod.module, node.name, True, mod.rel))
                        break
    return sorted(found, key=Candidate.rank)


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _path_argument(call: ast.Call) -> str | None:
    """The path a route call registers: its first positional argument, or ``path=`` / ``rule=``."""
    candidates = call.args[:1] + [k.value for k in call.keywords if k.arg in ROUTE_KEYWORDS]
    first = candidates[0] if candidates else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def route_paths(tree: ast.Module) -> list[str]:
    """The route paths a module declares; any other string (``action="version"``, a dict key) is not one."""
    calls: list[ast.Call] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            calls += [
                d
                for d in node.decorator_list
                if isinstance(d, ast.Call)
                and isinstance(d.func, ast.Attribute)
                and d.func.attr in ROUTE_DECORATORS
            ]
        elif isinstance(node, ast.Call) and _called_name(node) in ROUTE_CALLS:
            calls.append(node)
    found = []
    for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
        route = _path_argument(call)
        if route is not None:
            if _called_name(call) == "re_path":  # an anchored regex: ``^version/$`` is ``version/``
                route = route.removeprefix("^").removesuffix("$")
            found.append(route)
    return found


def _route(routes: list[str], pattern: re.Pattern[str]) -> str:
    """The first route path matching ``pattern``, with a leading slash (Django paths have none)."""
    route = next((r for r in routes if pattern.match(r)), None)
    return "" if route is None else "/" + route.lstrip("/")


def _version_field(strings: list[str]) -> str:
    present = set(strings)
    return next((f for f in VERSION_FIELDS if f in present), "git_sha")


# --- Procfile and workers ---------------------------------------------------------------------------------


def procfile(root: Path) -> dict[str, tuple[str, ...]]:
    """``name: command`` lines of a Procfile (Heroku's process list), as argv; web is the HTTP process."""
    path = root / "Procfile"
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(read_text(path, root).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep:
            raise NotDetected(f"Procfile:{number}: expected `name: command`, got {line.strip()!r}")
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise NotDetected(f"Procfile:{number}: cannot split the command: {exc}") from None
        out[name.strip().lower().replace("_", "-")] = argv
    return out


def _celery(modules: list[Module]) -> str:
    for mod in modules:
        imports = _imports(mod.tree)
        for node in mod.tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "Celery"
                and imports.get("Celery") == "celery"
            ):
                return mod.module
    return ""


# --- naming ---------------------------------------------------------------------------------------------


def project_name(root: Path, pyproject: dict[str, Any]) -> str:
    """A name for images, compose projects and k8s objects: lowercase, digits, '-', a letter first."""
    raw = str((pyproject.get("project") or {}).get("name") or "")
    raw = raw or str(((pyproject.get("tool") or {}).get("poetry") or {}).get("name") or "")
    raw = raw or root.resolve().name
    name = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:40].strip("-")
    return name or "service"


def _packages(root: Path, modules: list[Module]) -> tuple[str, ...]:
    """Top-level folders holding the project's Python code (what bandit scans)."""
    tops = {mod.rel.split("/", 1)[0] for mod in modules}
    return tuple(sorted(tops)) or (".",)


# --- the detection ---------------------------------------------------------------------------------------


def _django(root: Path, modules: list[Module]) -> tuple[str, str] | None:
    """(entry, urls file) for a Django project with manage.py, else None."""
    manage = root / "manage.py"
    if not manage.is_file():
        return None
    text = read_text(manage, root, errors="replace")
    if "django" not in text.lower():
        return None
    match = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]", text)
    settings = match.group(1) if match else ""
    wsgi = ""
    for mod in modules:
        if settings and not mod.module.startswith(settings):
            continue
        for node in mod.tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "WSGI_APPLICATION" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                wsgi = node.value.value
    project = settings.split(".")[0] if settings else ""
    if not wsgi and project and (root / project / "wsgi.py").is_file():
        wsgi = f"{project}.wsgi.application"
    if not wsgi:
        raise NotDetected(
            "manage.py found but no WSGI application: looked for WSGI_APPLICATION in the settings "
            f"({settings or 'DJANGO_SETTINGS_MODULE not set in manage.py'}) and <project>/wsgi.py"
        )
    module, _, attr = wsgi.rpartition(".")
    urls = next((m.rel for m in modules if m.rel.endswith("urls.py") and m.module.startswith(project)), "")
    return f"{module}:{attr}", urls


def detect(root: Path) -> Detected:
    """Detect the framework, entry point and app contract of the project in ``root``."""
    root = root.resolve()
    if not root.is_dir():
        raise NotDetected(f"{root} is not a folder")
    pyproject = read_pyproject(root)
    deps = dependencies(root, pyproject)
    modules = parse_modules(root)
    notes: list[str] = []
    missing: list[str] = []
    where_deps = (
        "requirements.txt"
        if (root / "requirements.txt").is_file()
        else "pyproject.toml [project] dependencies"
    )

    django = _django(root, modules)
    release: tuple[str, ...] = ()
    if django is not None:
        framework, (entry, app_file) = "django", django
        server, factory = "gunicorn", False
        release = DJANGO_RELEASE
        route_strings = [s for m in modules if m.rel.endswith("urls.py") for s in m.strings]
        routes = [r for m in modules if m.rel.endswith("urls.py") for r in m.routes]
        if "django" not in deps:
            missing.append("django")
    else:
        candidates = app_candidates(modules)
        if not candidates:
            raise NotDetected(
                f"no web app found in {root.name}: looked for {LOOKED_FOR} "
                f"({len(modules)} Python files, dependencies: {', '.join(sorted(deps)) or 'none declared'})"
            )
        best = candidates[0]
        others = [c for c in candidates[1:] if c.rank() == best.rank()]
        if others:
            notes.append(
                f"several apps found; using {best.module}:{best.attr} "
                f"(also {others[0].module}:{others[0].attr})"
            )
        framework, factory, app_file = best.framework, best.factory, best.rel
        entry = f"{best.module}:{best.attr}" + ("()" if factory and framework == "flask" else "")
        server = "gunicorn" if framework == "flask" else "uvicorn"
        if framework not in deps:
            missing.append(framework)
        route_strings = [s for m in modules if m.rel == best.rel for s in m.strings]
        route_strings += [s for m in modules if m.rel != best.rel for s in m.strings]
        routes = [r for m in modules if m.rel == best.rel for r in m.routes]
        routes += [r for m in modules if m.rel != best.rel for r in m.routes]
    if server not in deps:
        missing.append(server)
    # Inside its container the server listens on every interface; the orchestrator decides what is
    # published (compose binds 127.0.0.1 only).
    everywhere = "0.0.0.0"  # noqa: S104  # nosec B104
    if server == "uvicorn":
        command: tuple[str, ...] = ("uvicorn", entry, "--host", everywhere, "--port", str(PORT))
        command += ("--factory",) if factory else ()
    else:
        command = (
            "gunicorn",
            "--bind",
            f"{everywhere}:{PORT}",
            "--workers",
            "2",
            "--access-logfile",
            "-",
            entry,
        )
    health = _route(routes, HEALTH)
    version = _route(routes, VERSION)

    extra: list[ExtraProcess] = []
    procs = procfile(root)
    for name, argv in procs.items():
        if name == HTTP_PROCESS:  # Procfile's name for the HTTP process is the kit's too
            notes.append(f"Procfile web line left out: the HTTP process runs `{shlex.join(command)}`")
        elif name == "release":
            release = argv
        elif not PROCESS_NAME.match(name) or not argv:
            notes.append(f"Procfile process {name!r} left out (names: lowercase letters, digits, '-')")
        else:
            if any("$" in arg for arg in argv):
                notes.append(f"Procfile {name}: no shell runs the command, so `$VARS` are not expanded")
            extra.append(ExtraProcess(name, argv, "Procfile"))
    celery = _celery(modules) if "celery" in deps else ""
    if celery and not any(p.command[:1] == ("celery",) for p in extra):
        extra.append(ExtraProcess("celery", tuple(CELERY_WORKER.format(module=celery).split()), "celery"))

    project = pyproject.get("project") or {}
    poetry = (pyproject.get("tool") or {}).get("poetry")
    requirements = "requirements.txt"
    if (root / requirements).is_file() or not (project or poetry):
        install = "requirements"
    elif project and "dependencies" not in (project.get("dynamic") or []):
        install = "pyproject"
    else:
        install = "package"
    if install == "requirements" and not (root / requirements).is_file():
        notes.append(
            "no requirements.txt nor [project] in pyproject.toml: the Dockerfile expects requirements.txt"
        )
    pythons = tuple(config.declared_pythons(pyproject))
    secrets = ("SECRET_KEY",) if framework in ("django", "flask") else ()
    return Detected(
        root=root,
        name=project_name(root, pyproject),
        framework=framework,
        entry=entry,
        server=server,
        command=command,
        release=release,
        health=health,
        version=version,
        version_field=_version_field(route_strings) if version else "git_sha",
        app_file=app_file,
        processes=tuple(extra),
        install=install,
        requirements=requirements,
        packages=_packages(root, modules),
        pythons=pythons,
        src_layout=(root / "src").is_dir() and any(m.rel.startswith("src/") for m in modules),
        dependencies=frozenset(deps),
        missing=tuple(f"{dep} (add it to {where_deps})" for dep in missing),
        notes=tuple(notes),
        secrets=secrets,
    )
