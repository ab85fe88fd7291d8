"""The rollout settings of an ECS service: checked, turned into UpdateService's deploymentConfiguration,
compared with what a service has (plan lines), and the circuit breaker's failure threshold.

Pure functions, no AWS call. Sources (AWS ECS API reference and Developer Guide): DeploymentConfiguration
(minimumHealthyPercent rounded up, maximumPercent rounded down), DeploymentAlarms,
ServiceDeploymentCircuitBreaker (threshold 0.5 x desired, 3..200), UpdateService
(healthCheckGracePeriodSeconds, only for a load-balanced service), ContainerDefinition.stopTimeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from conveyor.config import Config, EcsTarget
from conveyor.deploy.model import Change
from conveyor.errors import ConfigError

FARGATE_MAX_STOP_TIMEOUT = 120  # ContainerDefinition.stopTimeout: "the max ... for Fargate is 120 seconds"
MAX_GRACE = 2_147_483_647  # UpdateService.healthCheckGracePeriodSeconds


def _source(cfg: Config, key: str) -> str:
    """Where a key's value came from (``file:line``, ``env VAR``, ``default``), for error lines."""
    value = cfg.values.get(key)
    return value.source if value is not None else key


def check_rollout(cfg: Config, *, fargate: bool) -> None:
    """The rollout settings against what UpdateService and RegisterTaskDefinition accept."""
    ecs, deploy = cfg.env.ecs, cfg.env.deploy
    low, high = ecs.minimum_healthy_percent, ecs.maximum_percent

    def refuse(key: str, expected: str, got: object) -> None:
        raise ConfigError(f"{_source(cfg, key)}: `{key}` {expected}, got {got}")

    if not 0 <= low <= 100:
        refuse("ecs.minimum_healthy_percent", "must be 0-100 (% of desired tasks kept running)", low)
    if high < 100:
        refuse("ecs.maximum_percent", "must be at least 100 (% of desired tasks during a rollout)", high)
    if high <= low:
        refuse(
            "ecs.maximum_percent",
            f"must be above ecs.minimum_healthy_percent ({low}), or no task can ever be replaced",
            high,
        )
    if not 0 <= ecs.health_check_grace <= MAX_GRACE:
        refuse("ecs.health_check_grace", f"must be 0-{MAX_GRACE} seconds", ecs.health_check_grace)
    for alarm in ecs.alarms:
        if not isinstance(alarm, str) or not alarm.strip() or len(alarm) > 255:
            refuse("ecs.alarms", "must list CloudWatch alarm names (1-255 characters)", repr(alarm))
    if deploy.keep_revisions < 1:
        refuse(
            "deploy.keep_revisions",
            "must be at least 1 (the revision a rollback goes back to is always kept)",
            deploy.keep_revisions,
        )
    if deploy.shutdown_timeout < 0:
        refuse("deploy.shutdown_timeout", "must be 0 or more seconds", deploy.shutdown_timeout)
    if fargate and deploy.shutdown_timeout > FARGATE_MAX_STOP_TIMEOUT:
        refuse(
            "deploy.shutdown_timeout",
            f"is the app container's stopTimeout, which Fargate allows up to {FARGATE_MAX_STOP_TIMEOUT} s",
            deploy.shutdown_timeout,
        )


def check_room(cfg: Config, service: str, desired: int) -> None:
    """A rolling update must be able to replace a task: with ``desired`` tasks, minimumHealthyPercent
    (rounded up) must stay below maximumPercent (rounded down), or ECS can neither stop an old task
    nor start a new one (Developer Guide, "Deploy Amazon ECS services by replacing tasks")."""
    low, high = cfg.env.ecs.minimum_healthy_percent, cfg.env.ecs.maximum_percent
    keep, most = math.ceil(low * desired / 100), math.floor(high * desired / 100)
    if desired > 0 and most <= keep:
        raise ConfigError(
            f"{_source(cfg, 'ecs.maximum_percent')}: ecs.minimum_healthy_percent {low} and "
            f"ecs.maximum_percent {high} leave no room to replace the {desired} task(s) of service "
            f"{service} (at least {keep} must stay healthy, at most {most} may run): raise "
            "maximum_percent or lower minimum_healthy_percent"
        )


def failure_threshold(desired: int) -> int:
    """Failed tasks at which ECS's circuit breaker fails a deployment: 0.5 x desired, at least 3, at most
    200 (API reference, ServiceDeploymentCircuitBreaker.threshold; rounded up)."""
    return min(200, max(3, math.ceil(desired / 2)))


def deployment_configuration(ecs: EcsTarget) -> dict[str, Any]:
    """UpdateService's deploymentConfiguration from the environment's rollout settings; the circuit
    breaker always on with rollback, the alarms (when listed) rolling back too."""
    return {
        "minimumHealthyPercent": ecs.minimum_healthy_percent,
        "maximumPercent": ecs.maximum_percent,
        "deploymentCircuitBreaker": {"enable": True, "rollback": True},
        "alarms": {"alarmNames": list(ecs.alarms), "enable": bool(ecs.alarms), "rollback": bool(ecs.alarms)},
    }


def rollout_changes(
    service: Mapping[str, Any] | None, deployment: Mapping[str, Any], grace: int | None
) -> list[Change]:
    """What update_service changes in a service's rollout settings (``service`` None: not known)."""
    live = dict((service or {}).get("deploymentConfiguration") or {})
    known = service is not None
    rows = [
        (key, str(live.get(key, "")), str(deployment[key]))
        for key in ("minimumHealthyPercent", "maximumPercent")
    ]
    rows.append(
        (
            "deploymentCircuitBreaker",
            _breaker(live.get("deploymentCircuitBreaker")),
            _breaker(deployment["deploymentCircuitBreaker"]),
        )
    )
    rows.append(("alarms", _alarms(live.get("alarms")), _alarms(deployment.get("alarms")) or "none"))
    if grace is not None:
        old = (service or {}).get("healthCheckGracePeriodSeconds")
        rows.append(("healthCheckGracePeriodSeconds", "" if old is None else str(old), str(grace)))
    changes = []
    for key, old_text, new_text in rows:
        if key == "alarms" and not old_text and new_text == "none":
            continue  # no alarms before, none now
        if not known or old_text != new_text:
            changes.append(Change(f"service {key}", old_text if known else "unknown", new_text))
    return changes


def _breaker(config: Mapping[str, Any] | None) -> str:
    if not config:
        return ""
    if not config.get("enable"):
        return "off"
    return "enable+rollback" if config.get("rollback") else "enable"


def _alarms(config: Mapping[str, Any] | None) -> str:
    if not config or not config.get("enable") or not config.get("alarmNames"):
        return ""
    return ",".join(config["alarmNames"]) + (" +rollback" if config.get("rollback") else "")


def describe_rollout(config: Mapping[str, Any], grace: int | None) -> str:
    """A deploymentConfiguration (and grace period) as one plan value."""
    if not config:
        return ""
    breaker = config.get("deploymentCircuitBreaker") or {}
    alarms = config.get("alarms") or {}
    parts = [
        f"min {config.get('minimumHealthyPercent', '?')}%",
        f"max {config.get('maximumPercent', '?')}%",
        "circuit breaker "
        + ("off" if not breaker.get("enable") else "+rollback" if breaker.get("rollback") else "no rollback"),
    ]
    if alarms.get("enable") and alarms.get("alarmNames"):
        rollback = "+rollback" if alarms.get("rollback") else "no rollback"
        parts.append(f"alarms {','.join(alarms['alarmNames'])} {rollback}")
    if grace is not None:
        parts.append(f"grace {grace}s")
    return ", ".join(parts)
