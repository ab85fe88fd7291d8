"""Images: BuildKit builds tagged by git sha, local base images, stand-ins, smoke tests, pushes.

Build commands are argv lists from pure functions (``build_argv``), run through the Runner; everything
else goes through the DockerEngine adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.config import ENV_DIR, AppContract, Config, read_pyproject
from conveyor.docker_engine import DockerEngine
from conveyor.errors import CommandFailed, ConfigError, ConveyorError
from conveyor.git import Revision
from conveyor.http import get_json, get_ok
from conveyor.runner import Runner

LOCAL_BASE = "conveyor-local/python:3.11-bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Stand-ins for the services compose needs, built from Debian packages on the local base.
STANDINS = {
    "postgres": "conveyor-local/postgres:15",
    "redis": "conveyor-local/redis:7",
    "haproxy": "conveyor-local/haproxy:2.6",
    # The `monitoring` compose profile (compose/compose.monitoring.yaml).
    "prometheus": "conveyor-local/prometheus:2.42",
    "alertmanager": "conveyor-local/alertmanager:0.25",
    "webhook": "conveyor-local/alert-webhook:1",
}
STANDIN_DIR = Path(__file__).resolve().parent / "data" / "standins"  # package data: any project builds them
CA_VARS = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
RELEASE_FILE = Path("build/release.json")


class BuildFailed(ConveyorError):
    """The image build failed; the message carries BuildKit's last error line."""


class ImageTooLarge(ConveyorError):
    """The runtime image is over its size budget."""


@dataclass(frozen=True)
class BuildOptions:
    target: str
    platform: str = ""
    no_cache: bool = False
    cache_from: str = ""
    cache_to: str = ""
    build_args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Built:
    """What a build produced; written to build/release.json so later steps deploy exactly this."""

    refs: tuple[str, ...]
    image_id: str
    size: int
    duration: float
    git_sha: str
    dirty: bool
    target: str

    @property
    def ref(self) -> str:
        return self.refs[0]

    def to_json(self) -> str:
        return json.dumps(
            {
                "refs": list(self.refs),
                "image_id": self.image_id,
                "size": self.size,
                "git_sha": self.git_sha,
                "dirty": self.dirty,
                "target": self.target,
            },
            indent=2,
        )


def build_secrets(environ: Mapping[str, str], pip_config: str = "") -> list[tuple[str, str]]:
    """BuildKit secrets: the CA bundle (first of SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE), pip config."""
    secrets: list[tuple[str, str]] = []
    for var in CA_VARS:
        path = environ.get(var, "")
        if path and Path(path).is_file():
            secrets.append(("ca", path))
            break
    pipconf = pip_config or environ.get("PIP_CONFIG_FILE", "")
    if pipconf and Path(pipconf).is_file():
        secrets.append(("pipconf", pipconf))
    return secrets


def build_argv(
    *,
    use_buildx: bool,
    dockerfile: str,
    context: str,
    tags: list[str],
    options: BuildOptions,
    build_args: Mapping[str, str],
    secrets: list[tuple[str, str]],
    iidfile: str,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """The build command. Secrets are passed by file path (``src=``), never by value."""
    argv = ["docker", "buildx", "build", "--load"] if use_buildx else ["docker", "build"]
    argv += ["--file", dockerfile, "--target", options.target, "--iidfile", iidfile, "--progress", "plain"]
    for tag in tags:
        argv += ["--tag", tag]
    for key, value in sorted(build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in sorted((labels or {}).items()):
        argv += ["--label", f"{key}={value}"]
    for secret_id, path in secrets:
        argv += ["--secret", f"id={secret_id},src={path}"]
    if options.platform:
        argv += ["--platform", options.platform]
    if options.no_cache:
        argv.append("--no-cache")
    # A value with `=` is a whole BuildKit cache spec (CI: type=gha, type=registry,ref=...); else a local dir.
    if options.cache_from and use_buildx:
        spec = options.cache_from if "=" in options.cache_from else f"type=local,src={options.cache_from}"
        argv += ["--cache-from", spec]
    if options.cache_to and use_buildx:
        spec = options.cache_to if "=" in options.cache_to else f"type=local,dest={options.cache_to},mode=max"
        argv += ["--cache-to", spec]
    argv.append(context)
    return argv


def has_buildx(runner: Runner) -> bool:
    try:
        runner.run(["docker", "buildx", "version"], capture=True, mutates=False)
    except CommandFailed:
        return False
    return True


def build(
    runner: Runner,
    engine: DockerEngine,
    cfg: Config,
    rev: Revision,
    options: BuildOptions,
    environ: Mapping[str, str],
) -> Built:
    """Build ``cfg.image`` at ``rev``, tagged ``<name>:<sha>[-dirty]`` and ``<name>:<branch>``, in budget."""
    spec = cfg.image
    dockerfile = cfg.root / spec.dockerfile
    if not dockerfile.is_file():
        source = cfg.values["image.dockerfile"].source
        raise ConveyorError(f"image.dockerfile: {spec.dockerfile} does not exist (set in {source})")
    tags = [f"{spec.name}:{rev.tag}"]
    if rev.branch_tag:
        tags.append(f"{spec.name}:{rev.branch_tag}")
    if rev.dirty:
        runner.say(f"note: the work tree has uncommitted changes; tagging {tags[0]}")
    meta = project_metadata(cfg.root)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    source = meta.get("source") or rev.remote
    args = {
        "BASE_IMAGE": spec.base_image,
        "GIT_SHA": rev.sha,
        "VERSION": meta.get("version", "0.0.0"),
        "CREATED": created,
        "SOURCE": source,
        **spec.build_args,
        **options.build_args,
    }
    # OCI labels from the project itself (the Dockerfile may set more); the revision label is how a
    # running container names the commit it was built from on every target.
    labels = {
        "org.opencontainers.image.title": meta.get("name", cfg.project),
        "org.opencontainers.image.revision": rev.sha,
        "org.opencontainers.image.version": meta.get("version", "0.0.0"),
        "org.opencontainers.image.created": created,
    }
    if source:
        labels["org.opencontainers.image.source"] = source
    iidfile = cfg.root / "build" / "iid"
    iidfile.parent.mkdir(parents=True, exist_ok=True)
    iidfile.unlink(missing_ok=True)
    use_buildx = has_buildx(runner)
    if not options.cache_from and not options.cache_to:  # flags win; CI sets image.cache_* by variable
        options = replace(
            options,
            cache_from=str(cfg.values["image.cache_from"].value),
            cache_to=str(cfg.values["image.cache_to"].value),
        )
    argv = build_argv(
        use_buildx=use_buildx,
        dockerfile=str(dockerfile),
        context=str(cfg.root / spec.context),
        tags=tags,
        options=options,
        build_args=args,
        secrets=build_secrets(environ),
        iidfile=str(iidfile),
        labels=labels,
    )
    start = time.monotonic()
    try:
        runner.run(argv, cwd=cfg.root, env=None if use_buildx else {"DOCKER_BUILDKIT": "1"})
    except CommandFailed as exc:
        raise BuildFailed(
            f"build of {spec.dockerfile} (target {options.target}) failed: {exc.tail}"
        ) from None
    duration = time.monotonic() - start
    if runner.dry:
        return Built(tuple(tags), "dry-run", 0, duration, rev.sha, rev.dirty, options.target)
    info = engine.inspect_image(tags[0])
    if info is None:
        raise BuildFailed(f"the build finished but {tags[0]} is not in the engine")
    built = Built(tuple(tags), info.id, info.size, duration, rev.sha, rev.dirty, options.target)
    budget = spec.max_size_mb
    size_mb = info.size / 1_000_000
    if options.target == spec.target and size_mb > budget:
        raise ImageTooLarge(
            f"{tags[0]} is {size_mb:.0f} MB, over the budget image.max_size_mb={budget} "
            f"({cfg.values['image.max_size_mb'].source})"
        )
    return built


def project_metadata(root: Path) -> dict[str, str]:
    """name, version and source URL from pyproject.toml's [project] table; missing keys are left out."""
    project = read_pyproject(root).get("project") or {}
    meta = {k: str(project[k]) for k in ("name", "version") if isinstance(project.get(k), str)}
    urls = project.get("urls") or {}
    for key in ("Source", "source", "Repository", "repository", "Homepage", "homepage"):
        if isinstance(urls.get(key), str):
            meta["source"] = urls[key]
            break
    return meta


def save_release(root: Path, built: Built) -> Path:
    path = root / RELEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(built.to_json() + "\n", encoding="utf-8")
    return path


def load_release(root: Path) -> dict[str, Any]:
    """The release record of the last build; a truncated or wrong-shaped file is one line naming it."""
    path = root / RELEASE_FILE
    if not path.is_file():
        raise ConveyorError(f"no build recorded in {RELEASE_FILE}: run `invoke build` first")
    again = "run `invoke build` again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{RELEASE_FILE}: not valid JSON ({_reason(exc)}); {again}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{RELEASE_FILE}: expected a JSON object, got {type(data).__name__}; {again}")
    for key in ("image_id", "git_sha"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{RELEASE_FILE}: `{key}` missing or not a string; {again}")
    refs = data.get("refs")
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and ":" in r for r in refs):
        raise ConfigError(f"{RELEASE_FILE}: `refs` must be a non-empty list of image:tag strings; {again}")
    pushed = data.get("pushed", {})
    if not isinstance(pushed, dict) or not all(isinstance(v, str) for v in pushed.values()):
        raise ConfigError(f"{RELEASE_FILE}: `pushed` must map environment names to image digests; {again}")
    return data


def _reason(exc: ValueError) -> str:
    """``json``'s reason without the document: 'Expecting value: line 1 column 5 (char 4)' -> its head."""
    return str(exc).split(" (char ")[0]


# --- local base image and stand-ins ----------------------------------------------------------------


def debootstrap_argv(target: Path, *, suite: str, mirror: str, packages: tuple[str, ...]) -> list[str]:
    return ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(target), mirror]


# Trimmed from the root filesystem before import: documentation and package caches, not needed to run.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt/archives", "var/lib/apt/lists")


def build_base(runner: Runner, root: Path, *, name: str, suite: str, mirror: str) -> str:
    """debootstrap a minimal Debian with Python and `docker import` it as ``name``."""
    work = root / "build" / "rootfs"
    rootfs = work / "base"
    tarball = work / "base.tar"
    if not runner.dry:
        shutil.rmtree(rootfs, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    try:
        with runner.step(f"debootstrap {suite} with {', '.join(BASE_PACKAGES)}"):
            runner.run(debootstrap_argv(rootfs, suite=suite, mirror=mirror, packages=BASE_PACKAGES))
        if not runner.dry:
            for rel in TRIM:
                target = rootfs / rel
                if target.is_dir():
                    shutil.rmtree(target)
                    target.mkdir()
        with runner.step(f"docker import {name}"):
            runner.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."])
            runner.run(
                [
                    "docker",
                    "import",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    'CMD ["python3"]',
                    str(tarball),
                    name,
                ]
            )
    finally:
        if not runner.dry:
            shutil.rmtree(rootfs, ignore_errors=True)
            tarball.unlink(missing_ok=True)
    return name


def build_standins(runner: Runner, root: Path, base: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Build the stand-ins of STANDINS (postgres, redis, haproxy, the monitoring stack) on ``base``."""
    use_buildx = has_buildx(runner)
    for service, ref in STANDINS.items():
        folder = root / STANDIN_DIR / service
        with runner.step(f"stand-in {service} -> {ref}"):
            argv = build_argv(
                use_buildx=use_buildx,
                dockerfile=str(folder / "Dockerfile"),
                context=str(folder),
                tags=[ref],
                options=BuildOptions(target="standin"),
                build_args={"BASE_IMAGE": base},
                secrets=build_secrets(environ),
                iidfile=str(root / "build" / f"iid-{service}"),
            )
            (root / "build").mkdir(exist_ok=True)
            runner.run(argv, env=None if use_buildx else {"DOCKER_BUILDKIT": "1"})
    return dict(STANDINS)


# --- smoke -------------------------------------------------------------------------------------------


def smoke(
    runner: Runner,
    engine: DockerEngine,
    ref: str,
    expect_sha: str,
    contract: AppContract,
    env: Mapping[str, str],
    *,
    timeout: float = 60,
) -> dict[str, str]:
    """Run ``ref`` alone as the app contract's HTTP process (else its first process) with ``env``
    (image.smoke_env): the health route must answer and the version route report ``expect_sha``.
    A process without HTTP must keep running. The container is always removed."""
    proc = contract.anchor
    ports: dict[str, int | None] = {f"{proc.port}/tcp": None} if proc.port else {}
    container = engine.run(ref, env=dict(env), ports=ports, command=list(proc.command) or None)
    if runner.dry:
        return {}
    try:
        if proc.port is None:
            with runner.step(f"watching {proc.name} of {ref} for {timeout:.0f}s at most"):
                _wait_steady(engine, container, min(timeout, 5))
            runner.say(f"smoke ok: {proc.name} keeps running (no HTTP process to probe)")
            return {}
        with runner.step(f"waiting for {ref} to answer {proc.health or '/'} (up to {timeout:.0f}s)"):
            base = _wait_answering(engine, container, proc.port, proc.health or "/", timeout)
        if not proc.version:
            runner.say(f"smoke ok: {proc.health or '/'} answers (no version route in the contract)")
            return {}
        version = get_json(base + proc.version)
        reported = version.get(proc.version_field)
        if reported != expect_sha:
            raise ConveyorError(
                f"smoke {ref}: {proc.version} reports {proc.version_field}={reported}, expected {expect_sha}"
            )
        runner.say(f"smoke ok: {proc.health} answers, {proc.version} reports {expect_sha[:12]}")
        return {k: str(v) for k, v in version.items()}
    finally:
        engine.remove(container)


def _exited(engine: DockerEngine, container: str, state: Mapping[str, Any]) -> ConveyorError:
    code = state["State"]["ExitCode"]
    return ConveyorError(f"the container exited with code {code}: {engine.logs(container).strip()[-300:]}")


def _wait_answering(engine: DockerEngine, container: str, port: int, route: str, timeout: float) -> str:
    """Poll ``route`` on the published port until it answers 2xx; returns the base URL."""
    deadline = time.monotonic() + timeout
    last = "not started"
    while True:
        state = engine.container(container)
        if not state["State"]["Running"]:
            raise _exited(engine, container, state)
        published = (state["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
        if published:
            base = f"http://{engine_host(os.environ)}:{published[0]['HostPort']}"
            try:
                get_ok(base + route, timeout=2)
                return base
            except ConveyorError as exc:
                last = str(exc)
        if time.monotonic() > deadline:
            raise ConveyorError(f"{route} did not answer within {timeout:.0f}s ({last})")
        time.sleep(0.5)


def engine_host(environ: Mapping[str, str]) -> str:
    """Where the engine's published ports answer: a tcp:// DOCKER_HOST's host (CI's docker:dind service
    publishes on the service, not on the job), else this machine."""
    from urllib.parse import urlsplit

    url = urlsplit(environ.get("DOCKER_HOST", ""))
    return url.hostname if url.scheme in ("tcp", "http", "https") and url.hostname else "127.0.0.1"


def _wait_steady(engine: DockerEngine, container: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = engine.container(container)
        if not state["State"]["Running"]:
            raise _exited(engine, container, state)
        time.sleep(0.5)


# --- push --------------------------------------------------------------------------------------------


def push(runner: Runner, engine: DockerEngine, cfg: Config) -> str:
    """Push the recorded build to ``cfg.env.registry``; return and record ``registry/name@sha256:...``."""
    if not cfg.env.registry:
        raise ConveyorError(
            f"environment {cfg.env.name} has no `registry` to push to ({ENV_DIR}/{cfg.env.name}.yaml)"
        )
    release = load_release(cfg.root)
    refs = [str(r) for r in release["refs"]]
    repository = f"{cfg.env.registry.rstrip('/')}/{cfg.image.name}"
    tag = refs[0].rsplit(":", 1)[1]
    if is_ecr(cfg.env.registry):
        from conveyor.aws import AwsClients

        ecr_prepare(runner, engine, AwsClients(cfg.env.ecs, cfg.dotenv), cfg.env.registry, cfg.image.name)
    with runner.step(f"push {repository}:{tag}"):
        engine.tag(str(release["image_id"]), repository, tag)
        digest = engine.push(repository, tag)
    pinned = f"{repository}@{digest}"
    if not runner.dry:
        from conveyor import supply

        local_sbom = supply.sbom_path(cfg.root, str(release["image_id"]))
        if local_sbom.is_file():  # the same image under its registry digest
            supply.save_sbom(cfg.root, json.loads(local_sbom.read_text(encoding="utf-8")), digest)
        pushed = dict(release.get("pushed", {}))
        pushed[cfg.env.name] = pinned
        path = cfg.root / RELEASE_FILE
        path.write_text(json.dumps({**release, "pushed": pushed}, indent=2) + "\n", encoding="utf-8")
    return pinned


def is_ecr(registry: str) -> bool:
    return ".dkr.ecr." in registry and registry.split("/")[0].endswith(".amazonaws.com")


def ecr_prepare(runner: Runner, engine: DockerEngine, clients: Any, registry: str, name: str) -> None:
    """Create the repository if missing, then log in with get_authorization_token (password to the SDK)."""
    import base64

    from conveyor.aws import error_code, translate

    ecr = clients("ecr")
    try:
        ecr.describe_repositories(repositoryNames=[name])
    except Exception as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise translate("describe_repositories", exc) from None
        if runner.dry:
            runner.say(f"[dry] would create ECR repository {name}")
        else:
            try:
                ecr.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
            except Exception as exc2:
                raise translate("create_repository", exc2) from None
            runner.say(f"created ECR repository {name}")
    try:
        data = ecr.get_authorization_token()["authorizationData"][0]
    except Exception as exc:
        raise translate("get_authorization_token", exc) from None
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    engine.login(registry.split("/")[0], user, password)
