"""infra.plan, infra.up, infra.down: the environment's CloudFormation stack (conveyor.infra)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, task

if TYPE_CHECKING:
    from conveyor.infra import Infra

ENV_HELP = {"env": "environment whose stack it is (deploy/environments/<env>.yaml)"}


def _infra(c: Context, env: str) -> Infra | None:
    """The core for ``env``; None under --dry, after the template was rendered and validated offline."""
    from conveyor.aws import AwsClients
    from conveyor.infra import Infra, StackApi

    cfg = load_config(env or None)
    runner = make_runner(c)
    if runner.dry:
        return None
    clients = AwsClients(cfg.env.ecs, cfg.dotenv)
    clients.check()
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return Infra(cfg, runner, StackApi(clients), color=color)


def _dry(c: Context, env: str, action: str) -> None:
    from conveyor.errors import ConveyorError
    from conveyor.infra import Infra, StackApi

    cfg = load_config(env or None)

    def no_aws(service: str) -> None:
        raise ConveyorError(f"--dry reaches no AWS service ({service})")

    Infra(cfg, make_runner(c), StackApi(no_aws)).dry(action)


@task(help=ENV_HELP)
def plan(c: Context, env: str = "") -> None:
    """Show what infra.up would change in the environment's stack (a change set, deleted again)."""
    infra = _infra(c, env)
    if infra is None:
        _dry(c, env, "plan")
        return
    infra.plan()


@task(help=ENV_HELP)
def up(c: Context, env: str = "") -> None:
    """Create or update the environment's stack, printing its events as they come."""
    infra = _infra(c, env)
    if infra is None:
        _dry(c, env, "create or update")
        return
    infra.up()


@task(help={**ENV_HELP, "yes": "do not ask for confirmation"})
def down(c: Context, env: str = "", yes: bool = False) -> None:
    """Delete the environment's stack (refused for an environment with infra.protected)."""
    from conveyor.errors import ConfigError, UsageError
    from conveyor.infra import stack_name

    cfg = load_config(env or None)
    name = stack_name(cfg)
    if cfg.env.infra.protected:
        source = cfg.values["infra.protected"].source
        raise ConfigError(f"{source}: infra.protected is true: infra.down refuses to delete stack {name}")
    if c.config.run.dry:
        _dry(c, env, "delete")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"infra.down deletes stack {name} and everything in it: pass --yes to confirm")
        answer = input(f"delete stack {name} and everything in it? type its name to confirm: ")
        if answer.strip() != name:
            raise UsageError(f"not confirmed: stack {name} was left alone")
    infra = _infra(c, env)
    if infra is not None:
        infra.down()
