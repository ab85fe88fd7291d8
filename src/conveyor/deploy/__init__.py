"""The deploy model (conveyor.deploy.model) and the factory that picks an environment's target."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from conveyor.config import ENV_DIR, Config
from conveyor.deploy.bake import Bake
from conveyor.deploy.journal import FileJournal, JournalStore
from conveyor.deploy.model import Deployer, Lock, Release, Target
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver

if TYPE_CHECKING:
    from conveyor.deploy.ecs import EcsApi

__all__ = ["Deployer", "Release", "deployer_for", "journal_for", "lock_for", "resolver_for", "target_for"]


def target_for(cfg: Config, runner: Runner, image: str) -> Target:
    """The deploy target of the environment: compose, ecs or k8s (the same Deployer drives them all)."""
    if cfg.env.target == "compose":
        from conveyor import compose
        from conveyor.deploy.compose import ComposeDeployTarget
        from conveyor.docker_engine import DockerEngine

        stack = compose.stack_for(cfg, resolver_for(cfg, runner), image)
        return ComposeDeployTarget(
            runner,
            DockerEngine(runner),
            stack,
            lock_for(cfg),
            cfg.env.name,
            cfg.app,
            timeout=cfg.env.deploy.timeout,
        )
    if cfg.env.target == "ecs":
        from conveyor.deploy import ecs
        from conveyor.deploy.model import Owner

        path, name = ecs.template_path(cfg)
        template = ecs.load_template(path, name=name)
        ecs.check_static(cfg, template)  # every offline check, before any AWS client exists
        if cfg.env.ecs.stack and runner.dry:  # offline: name what the stack's outputs would say
            shown = f"<from stack {cfg.env.ecs.stack}>"
            ecs_cfg = replace(
                cfg.env.ecs, cluster=cfg.env.ecs.cluster or shown, service=cfg.env.ecs.service or shown
            )
            cfg = replace(cfg, env=replace(cfg.env, ecs=ecs_cfg))
        elif cfg.env.ecs.stack:  # cluster and services from the stack's outputs (conveyor.infra)
            from conveyor.aws import AwsClients
            from conveyor.infra import resolved

            clients = AwsClients(cfg.env.ecs, cfg.dotenv)
            clients.check()
            cfg = resolved(cfg, clients)
        api = _ecs_api(cfg, check=not runner.dry)  # under --dry the ECS plan is offline: no credentials
        return ecs.EcsDeployTarget(runner, api, cfg, template=template, deployer=Owner.here("").who)
    if cfg.env.target == "k8s":
        from conveyor.deploy import k8s
        from conveyor.deploy.model import Owner

        kube = k8s.KubeCtl(runner, cfg.env.k8s.namespace, cfg.env.k8s.context)
        resolver = resolver_for(cfg, runner)
        return k8s.K8sDeployTarget(runner, kube, cfg, deployer=Owner.here("").who, resolver=resolver)
    raise _not_available(cfg)


def resolver_for(cfg: Config, runner: Runner) -> SecretResolver:
    """The environment's secret resolver; `aws-sm:`/`ssm:` references reach AWS with the environment's
    region, profile, endpoint and credentials (.env files included), on every target."""
    from conveyor.aws import AwsClients

    return SecretResolver(
        runner.redact, environ=cfg.dotenv, root=cfg.root, aws=AwsClients(cfg.env.ecs, cfg.dotenv)
    )


def _ecs_api(cfg: Config, *, check: bool = True) -> EcsApi:
    from conveyor.aws import AwsClients
    from conveyor.deploy.ecs import EcsApi

    clients = AwsClients(cfg.env.ecs, cfg.dotenv)
    if check:  # else the first AWS call checks (and an offline --dry plan makes none)
        clients.check()
    return EcsApi(clients)


def lock_for(cfg: Config) -> Lock:
    """The environment's deploy lock (compose: a lock file; ecs: an SSM parameter; k8s: a Lease)."""
    if cfg.env.target == "compose":
        from conveyor.deploy.locks import FileLock

        return FileLock(cfg.root, cfg.env.name)
    if cfg.env.target == "ecs":
        from conveyor.deploy.ecs import SsmLock

        return SsmLock(_ecs_api(cfg), cfg.env.name, cfg.project)
    if cfg.env.target == "k8s":
        from conveyor.deploy.k8s import KubeCtl, LeaseLock
        from conveyor.runner import Runner

        kube = KubeCtl(Runner(), cfg.env.k8s.namespace, cfg.env.k8s.context)
        return LeaseLock(kube, cfg.env.k8s.namespace, cfg.env.name)
    raise _not_available(cfg)


def journal_for(cfg: Config, runner: Runner) -> JournalStore:
    """The environment's journal, where every operator reads it (compose: a local file; ecs: SSM
    parameters; k8s: ConfigMaps in its namespace), falling back to the local file when not writable."""
    local = FileJournal(cfg.root, cfg.env.name)
    if cfg.env.target == "ecs":
        from conveyor.aws import AwsClients
        from conveyor.deploy.journal import FallbackJournal, SsmJournal

        ssm = SsmJournal(AwsClients(cfg.env.ecs, cfg.dotenv), cfg.project, cfg.env.name)
        return FallbackJournal(ssm, local, runner.say)
    if cfg.env.target == "k8s":
        from conveyor.deploy.journal import ConfigMapJournal, FallbackJournal
        from conveyor.deploy.k8s import KubeCtl

        kube = KubeCtl(runner, cfg.env.k8s.namespace, cfg.env.k8s.context)
        return FallbackJournal(ConfigMapJournal(kube, cfg.env.k8s.namespace, cfg.env.name), local, runner.say)
    return local


def _not_available(cfg: Config) -> ConveyorError:
    return ConveyorError(f"environment {cfg.env.name}: unknown target `{cfg.env.target}`")


def deployer_for(cfg: Config, runner: Runner, image: str) -> Deployer:
    """The Deployer for the environment; refuses (before any change) a contract it could not verify."""
    web = cfg.app.web
    if web is not None and not cfg.env.url:
        raise ConfigError(
            f"{ENV_DIR}/{cfg.env.name}.yaml: process `{web.name}` serves HTTP, so the environment needs "
            "`url` (where the smoke probe reaches it)"
        )
    return Deployer(
        target=target_for(cfg, runner, image),
        runner=runner,
        journal=journal_for(cfg, runner),
        env=cfg.env.name,
        timeout=cfg.env.deploy.timeout,
        lock_ttl=cfg.env.deploy.lock_ttl,
        contract=cfg.app,
        url=cfg.env.url,
        bake=Bake.from_settings(cfg.env.deploy),
    )
