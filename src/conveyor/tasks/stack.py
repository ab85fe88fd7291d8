"""up, down, ps, exec: an environment's compose stack with the right project name and files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, task

if TYPE_CHECKING:
    from conveyor.compose import Stack
    from conveyor.config import Config
    from conveyor.runner import Runner

ENV_HELP = {"env": "environment: local (production-shaped) or dev (source mounted, auto-reload)"}


def _stack(c: Context, env: str, *, need_image: bool = True) -> tuple[Runner, Stack, Config]:
    from conveyor import compose, images
    from conveyor.deploy import resolver_for

    cfg = load_config(env or None)
    runner = make_runner(c)
    built = images.load_release(cfg.root) if need_image else {"image_id": "none", "git_sha": ""}
    resolver = resolver_for(cfg, runner)
    stack = compose.stack_for(cfg, resolver, str(built["image_id"]), str(built["git_sha"]))
    return runner, stack, cfg


def _known_service(runner: Runner, stack: Stack, service: str) -> None:
    from conveyor import compose
    from conveyor.errors import UsageError

    services = compose.validate(runner, stack)
    if service not in services:
        raise UsageError(f"unknown service `{service}`; services: {', '.join(services)}")


@task(help={**ENV_HELP, "timeout": "seconds to wait for every service to be healthy"})
def up(c: Context, env: str = "", timeout: int = 180) -> None:
    """Run the release command with the last build, start the stack and wait until it is healthy."""
    from conveyor import compose
    from conveyor.errors import ConveyorError

    runner, stack, cfg = _stack(c, env)
    compose.validate(runner, stack, cfg.app.names())
    try:
        if cfg.app.release:
            with runner.step(f"release command: {' '.join(cfg.app.release)}"):
                compose.run_release(runner, stack, cfg.app)
        with runner.step(f"up {stack.project} (waiting up to {timeout}s for health)"):
            compose.run(runner, stack, "up", "--detach", "--wait", "--wait-timeout", str(timeout))
    except ConveyorError:
        # Nothing half-started: take down what this call started (named volumes are kept).
        compose.run(runner, stack, "down", "--remove-orphans")
        raise
    if not runner.dry:
        print(f"{stack.project} is up: {cfg.env.url}")


@task(help={**ENV_HELP, "volumes": "also remove named volumes (data is lost)"})
def down(c: Context, env: str = "", volumes: bool = False) -> None:
    """Stop and remove the environment's containers and network (volumes kept unless --volumes)."""
    from conveyor import compose

    runner, stack, _ = _stack(c, env, need_image=False)
    compose.run(runner, stack, "down", "--remove-orphans", *(["--volumes"] if volumes else []))


@task(help=ENV_HELP)
def ps(c: Context, env: str = "") -> None:
    """List the environment's containers with state and health."""
    from conveyor import compose

    runner, stack, _ = _stack(c, env, need_image=False)
    compose.run(runner, stack, "ps", "--all", mutates=False)


@task(name="exec", help={**ENV_HELP, "service": "service to run in", "cmd": "command line to run"})
def exec_(c: Context, service: str, cmd: str = "sh", env: str = "") -> None:
    """Run a command in a running service container."""
    import shlex

    from conveyor import compose

    runner, stack, _ = _stack(c, env, need_image=False)
    _known_service(runner, stack, service)
    compose.run(runner, stack, "exec", "-T", service, *shlex.split(cmd))
