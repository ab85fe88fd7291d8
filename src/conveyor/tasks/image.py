"""build, image.*: BuildKit builds tagged by git sha, local base and stand-in images, smoke and push."""

from __future__ import annotations

import os

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, project_root, task


@task(
    help={
        "target": "Dockerfile stage (default: image.target, the release stage); others are not releases",
        "platform": "target platform, e.g. linux/amd64",
        "no_cache": "build without the layer cache",
        "cache_from": "local BuildKit cache dir to read (CI)",
        "cache_to": "local BuildKit cache dir to write (CI)",
        "env": "environment whose config applies (default: local)",
    }
)
def build(
    c: Context,
    target: str = "",
    platform: str = "",
    no_cache: bool = False,
    cache_from: str = "",
    cache_to: str = "",
    env: str = "",
) -> None:
    """Build the image once with BuildKit, tagged <name>:<git-sha> and <name>:<branch>."""
    from conveyor import images
    from conveyor.docker_engine import DockerEngine
    from conveyor.git import revision

    cfg = load_config(env or None)
    runner = make_runner(c)
    rev = revision(runner, cfg.root)
    options = images.BuildOptions(target or cfg.image.target, platform, no_cache, cache_from, cache_to)
    engine = DockerEngine(runner)
    with runner.step(f"build {cfg.image.name} ({options.target}) at {rev.tag}"):
        built = images.build(runner, engine, cfg, rev, options, os.environ)
    if runner.dry:
        return
    print(f"built    {', '.join(built.refs)}")
    print(f"id       {built.image_id}")
    print(f"size     {built.size / 1_000_000:.1f} MB (budget {cfg.image.max_size_mb} MB)")
    print(f"duration {built.duration:.1f}s")
    if built.target != cfg.image.target:
        print(f"target {built.target} is not a release: build/release.json is unchanged")
        return
    from conveyor import supply

    with runner.step("SBOM of the image's virtualenv"):
        sbom = supply.sbom(runner, built.ref, built.image_id, cfg.image.python)
        path = supply.save_sbom(cfg.root, sbom, built.image_id)[0]
    print(f"sbom     {path.relative_to(cfg.root)}")
    print(f"recorded {images.save_release(cfg.root, built).relative_to(cfg.root)}")


@task(
    help={
        "name": "image name (default: conveyor-local/python:3.11-bookworm)",
        "suite": "Debian suite",
        "mirror": "Debian mirror URL",
        "save": "record it as CONVEYOR_IMAGE__BASE_IMAGE in .env",
        "force": "rebuild even if the image exists",
    }
)
def base(
    c: Context,
    name: str = "",
    suite: str = "bookworm",
    mirror: str = "",
    save: bool = False,
    force: bool = False,
) -> None:
    """Build a Python base image from Debian packages (debootstrap + docker import), no registry needed."""
    from conveyor import dotenv_file, images
    from conveyor.docker_engine import DockerEngine

    runner = make_runner(c)
    root = project_root()
    ref = name or images.LOCAL_BASE
    if not force and DockerEngine(runner).inspect_image(ref) is not None:
        print(f"base image {ref} already in the engine (--force rebuilds it)")
    else:
        images.build_base(runner, root, name=ref, suite=suite, mirror=mirror or images.DEBIAN_MIRROR)
        print(f"base image {ref}")
    if save and not runner.dry:
        dotenv_file.update(root / ".env", {"CONVEYOR_IMAGE__BASE_IMAGE": ref})
        print("recorded CONVEYOR_IMAGE__BASE_IMAGE in .env")


@task(
    help={
        "base": "base image (default: image.base_image)",
        "save": "record POSTGRES_IMAGE, REDIS_IMAGE, HAPROXY_IMAGE, PROMETHEUS_IMAGE, ... in .env",
    }
)
def standins(c: Context, base: str = "", save: bool = False) -> None:
    """Build local stand-ins (postgres, redis, haproxy, prometheus, alertmanager) from Debian packages."""
    from conveyor import dotenv_file, images

    runner = make_runner(c)
    cfg = load_config(None)
    built = images.build_standins(runner, cfg.root, base or cfg.image.base_image, os.environ)
    for service, ref in built.items():
        print(f"{service:<9} {ref}")
    if save and not runner.dry:
        saved = {f"{s.upper()}_IMAGE": ref for s, ref in built.items()}
        dotenv_file.update(cfg.root / ".env", saved)
        print(f"recorded {', '.join(saved)} in .env")


@task(help={"ref": "image to smoke (default: the last build)", "timeout": "seconds to wait for an answer"})
def smoke(c: Context, ref: str = "", timeout: int = 60) -> None:
    """Run the built image alone: its health route must answer, its version route report the build's sha."""
    from conveyor import images
    from conveyor.docker_engine import DockerEngine

    cfg = load_config(None)
    runner = make_runner(c)
    release = images.load_release(cfg.root)
    images.smoke(
        runner,
        DockerEngine(runner),
        ref or str(release["image_id"]),
        str(release["git_sha"]),
        cfg.app,
        cfg.image.smoke_env,
        timeout=timeout,
    )


@task(help={"env": "environment whose registry receives the image"})
def push(c: Context, env: str = "") -> None:
    """Push the last build to the environment's registry and record the pushed digest."""
    from conveyor import images
    from conveyor.docker_engine import DockerEngine

    cfg = load_config(env or None)
    runner = make_runner(c)
    pushed = images.push(runner, DockerEngine(runner), cfg)
    print(f"pushed {pushed}")
