"""ECS task definitions as pure functions: render per process, diff, names, launch, static checks."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor.config import AppContract, EcsTarget, Process
from conveyor.deploy.ecs import (
    Inputs,
    app_container,
    check_static,
    diff,
    family_names,
    load_template,
    render,
    render_all,
    run_task_launch,
    service_names,
    template_path,
)
from conveyor.errors import ConfigError

IMAGE = "registry.example.test/app@sha256:" + "2" * 64
WEB = Process("web", command=("python", "-m", "app", "serve"), port=8000)
WORKER = Process(
    "worker", command=("python", "-m", "app", "worker"), healthcheck=("python", "-m", "app", "hc")
)
CONTRACT = AppContract((WEB, WORKER), release=("python", "-m", "app", "migrate"))
INPUTS = Inputs(
    image=IMAGE,
    git_sha="b" * 40,
    deployer="tester",
    variables={"LOG_LEVEL": "info"},
    secrets={"DATABASE_URL": "arn:aws:secretsmanager:eu-west-1:1:secret:db:url::"},
    substitutions={"AWS_REGION": "eu-west-1", "AWS_ACCOUNT_ID": "123456789012"},
)


def template() -> dict[str, Any]:
    return {
        "family": "demo",
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": "256",
        "memory": "512",
        "executionRoleArn": "arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo",
        "tags": [{"key": "team", "value": "payments"}, {"key": "conveyor:git-sha", "value": "stale"}],
        "containerDefinitions": [
            {
                "name": "proxy",
                "image": "envoyproxy/envoy:v1.30.1",
                "environment": [{"name": "ENVOY_LOG_LEVEL", "value": "warn"}],
            },
            {
                "name": "app",
                "image": "placeholder",
                "portMappings": [{"containerPort": 8000, "protocol": "tcp"}],
                "healthCheck": {"command": ["CMD", "curl", "-f", "http://127.0.0.1:8000/health"]},
                "environment": [
                    {"name": "LOG_LEVEL", "value": "debug"},
                    {"name": "FROM_TEMPLATE", "value": "yes"},
                ],
                "secrets": [
                    {"name": "SENTRY_DSN", "valueFrom": "arn:aws:ssm:eu-west-1:1:parameter/sentry"},
                    {"name": "DATABASE_URL", "valueFrom": "arn:old"},
                ],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-region": "${AWS_REGION}", "awslogs-stream-prefix": "${PROCESS}"},
                },
            },
        ],
    }


def container(definition: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in definition["containerDefinitions"] if c["name"] == name)


def pairs(items: list[dict[str, str]], field: str) -> dict[str, str]:
    return {item["name"]: item[field] for item in items}


# --- render --------------------------------------------------------------------------------------


def test_the_app_container_gets_the_image_command_env_secrets_and_digest() -> None:
    app = container(render(template(), WEB, family="demo", container="app", inputs=INPUTS), "app")
    assert app["image"] == IMAGE
    assert app["command"] == ["python", "-m", "app", "serve"]
    # the environment's vars over the template's (env wins on the same name), plus IMAGE_DIGEST
    assert pairs(app["environment"], "value") == {
        "FROM_TEMPLATE": "yes",
        "IMAGE_DIGEST": IMAGE,
        "LOG_LEVEL": "info",
    }
    assert pairs(app["secrets"], "valueFrom") == {
        "DATABASE_URL": "arn:aws:secretsmanager:eu-west-1:1:secret:db:url::",
        "SENTRY_DSN": "arn:aws:ssm:eu-west-1:1:parameter/sentry",
    }
    assert app["portMappings"] == [{"containerPort": 8000, "protocol": "tcp"}]
    assert app["healthCheck"]["command"][1] == "curl"


def test_a_sidecar_keeps_its_own_image_environment_and_no_secrets() -> None:
    for process in (WEB, WORKER):
        proxy = container(render(template(), process, family="x", container="app", inputs=INPUTS), "proxy")
        assert proxy == template()["containerDefinitions"][0]


def test_a_process_without_http_loses_ports_and_the_http_healthcheck_and_gets_its_own() -> None:
    app = container(render(template(), WORKER, family="demo-worker", container="app", inputs=INPUTS), "app")
    assert "portMappings" not in app
    assert app["command"] == ["python", "-m", "app", "worker"]
    check = app["healthCheck"]
    assert check["command"] == ["CMD", "python", "-m", "app", "hc"]
    assert 5 <= check["interval"] <= 300
    assert 2 <= check["timeout"] <= 60
    assert 1 <= check["retries"] <= 10
    assert 0 <= check["startPeriod"] <= 300


def test_a_process_without_http_or_healthcheck_has_no_healthcheck() -> None:
    quiet = Process("beat")
    app = container(render(template(), quiet, family="demo-beat", container="app", inputs=INPUTS), "app")
    assert "healthCheck" not in app
    assert "portMappings" not in app
    assert "command" not in app  # the image's CMD


def test_the_http_process_gets_a_port_mapping_when_the_template_has_none() -> None:
    bare = template()
    del container(bare, "app")["portMappings"]
    app = container(
        render(bare, Process("web", port=9000), family="d", container="app", inputs=INPUTS), "app"
    )
    assert app["portMappings"] == [{"containerPort": 9000, "protocol": "tcp"}]


def test_substitutions_tags_and_the_template_left_alone() -> None:
    original = template()
    kept = copy.deepcopy(original)
    definitions = render_all(original, CONTRACT, container="app", inputs=INPUTS)
    assert original == kept
    assert [d["family"] for d in definitions.values()] == ["demo", "demo-worker"]
    worker = definitions["worker"]
    assert worker["executionRoleArn"] == "arn:aws:iam::123456789012:role/demo"
    options = container(worker, "app")["logConfiguration"]["options"]
    assert options == {"awslogs-region": "eu-west-1", "awslogs-stream-prefix": "worker"}
    tags = pairs([{"name": t["key"], "value": t["value"]} for t in worker["tags"]], "value")
    assert tags["team"] == "payments"
    assert tags["conveyor:git-sha"] == "b" * 40
    assert tags["conveyor:process"] == "worker"
    assert tags["conveyor:deployer"] == "tester"
    assert [t["key"] for t in worker["tags"]].count("conveyor:git-sha") == 1


# --- names ---------------------------------------------------------------------------------------


def ecs_target(**kwargs: Any) -> EcsTarget:
    return EcsTarget("cluster", "demo", "eu-west-1", "", "", **kwargs)


def test_services_and_families_default_from_the_anchor() -> None:
    assert CONTRACT.anchor is WEB
    assert service_names(ecs_target(), CONTRACT) == {"web": "demo", "worker": "demo-worker"}
    assert family_names("fam", CONTRACT) == {"web": "fam", "worker": "fam-worker"}
    explicit = ecs_target(services={"worker": "jobs"})
    assert service_names(explicit, CONTRACT) == {"web": "demo", "worker": "jobs"}


def test_without_an_http_process_the_first_process_is_the_anchor() -> None:
    contract = AppContract((WORKER, Process("beat")))
    assert contract.anchor is WORKER
    assert service_names(ecs_target(), contract) == {"worker": "demo", "beat": "demo-beat"}
    assert family_names("fam", contract) == {"worker": "fam", "beat": "fam-beat"}


def test_the_app_container_is_the_named_one_or_the_first() -> None:
    assert app_container(template(), "", "taskdef.yaml") == "proxy"
    assert app_container(template(), "app", "taskdef.yaml") == "app"
    with pytest.raises(ConfigError) as exc:
        app_container(template(), "web", "deploy/ecs/taskdef.yaml")
    assert str(exc.value) == (
        "deploy/ecs/taskdef.yaml: ecs.container `web` names no container of the template "
        "(containers: proxy, app)"
    )


# --- diff ----------------------------------------------------------------------------------------


def changes(live: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c.what: (c.old, c.new) for c in diff(live, new, container="app")}


def test_the_same_definition_has_no_changes() -> None:
    new = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    assert diff(new, new, container="app") == []


def test_removed_variables_and_secrets_are_changes_and_the_digest_variable_is_not_shown() -> None:
    live = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    inputs = Inputs(IMAGE[:-1] + "3", "c" * 40, "tester", {}, {}, INPUTS.substitutions)
    bare = template()
    app = container(bare, "app")
    app["environment"], app["secrets"] = [], []
    found = changes(live, render(bare, WEB, family="demo", container="app", inputs=inputs))
    assert found == {
        "image": (IMAGE, IMAGE[:-1] + "3"),
        "env FROM_TEMPLATE": ("yes", "(removed)"),
        "env LOG_LEVEL": ("info", "(removed)"),
        "secret DATABASE_URL (valueFrom)": (
            "arn:aws:secretsmanager:eu-west-1:1:secret:db:url::",
            "(removed)",
        ),
        "secret SENTRY_DSN (valueFrom)": ("arn:aws:ssm:eu-west-1:1:parameter/sentry", "(removed)"),
    }


def test_a_first_deploy_shows_everything_and_a_process_change_shows_its_command_and_checks() -> None:
    web = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    worker = render(template(), WORKER, family="demo", container="app", inputs=INPUTS)
    first = changes(None, worker)
    assert first["image"] == ("", IMAGE)
    assert first["command"] == ("", "python -m app worker")
    assert first["sidecar proxy image"] == ("", "envoyproxy/envoy:v1.30.1")
    switched = changes(web, worker)
    assert switched["command"] == ("python -m app serve", "python -m app worker")
    assert switched["ports"] == ("8000", "")
    assert switched["healthCheck"] == ("CMD curl -f http://127.0.0.1:8000/health", "CMD python -m app hc")


def test_variables_whose_name_looks_secret_are_masked_old_and_new() -> None:
    def with_env(variables: dict[str, str]) -> dict[str, Any]:
        inputs = Inputs(IMAGE, "b" * 40, "tester", variables, {}, INPUTS.substitutions)
        return render(template(), WEB, family="demo", container="app", inputs=inputs)

    live = with_env({"API_KEY": "old-key", "DB_PASSWORD": "hunter2", "LOG_LEVEL": "info"})
    new = with_env({"API_KEY": "new-key", "STRIPE_TOKEN": "tok", "LOG_LEVEL": "debug"})
    assert changes(live, new) == {
        "env API_KEY": ("***", "***"),  # a changed value still shows as a change
        "env DB_PASSWORD": ("***", "(removed)"),
        "env STRIPE_TOKEN": ("", "***"),
        "env LOG_LEVEL": ("info", "debug"),
    }
    assert changes(live, live) == {}


def test_sidecar_images_and_an_app_container_under_another_name() -> None:
    new = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    live = copy.deepcopy(new)
    container(live, "proxy")["image"] = "envoyproxy/envoy:v1.29.0"
    assert changes(live, new) == {
        "sidecar proxy image": ("envoyproxy/envoy:v1.29.0", "envoyproxy/envoy:v1.30.1")
    }
    # The live revision's app container was called `web` (the only container): compared as the app's.
    old = {**new, "containerDefinitions": [{**container(new, "app"), "name": "web"}]}
    assert changes(old, new) == {"sidecar proxy image": ("", "envoyproxy/envoy:v1.30.1")}


# --- launch of the release command ---------------------------------------------------------------

NETWORK = {"awsvpcConfiguration": {"subnets": ["subnet-1"], "securityGroups": ["sg-1"]}}


def test_the_release_task_launches_like_the_service() -> None:
    fargate = {"launchType": "FARGATE", "platformVersion": "1.4.0", "networkConfiguration": NETWORK}
    assert run_task_launch(fargate) == fargate
    spot = {
        "capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
        "platformVersion": "LATEST",
        "networkConfiguration": NETWORK,
    }
    assert run_task_launch(spot) == spot
    assert run_task_launch({"launchType": "EC2", "platformVersion": "LATEST"}) == {"launchType": "EC2"}
    assert run_task_launch({}) == {}  # the cluster's default capacity provider strategy


# --- loading and static checks -------------------------------------------------------------------


def project(tmp_path: Path, ecs_extra: str = "", secrets: str = "aws-sm:db#url") -> config.Config:
    files = {
        "invoke.yaml": """
            conveyor:
              processes:
                web: {port: 8000}
                worker: {command: [python, -m, app, worker]}
            """,
        "deploy/environments/staging.yaml": f"""
            target: ecs
            ecs:
              cluster: c
              service: demo
              region: eu-west-1
              {ecs_extra}
            secrets:
              DATABASE_URL: {secrets}
            """,
        "deploy/ecs/taskdef.yaml": """
            family: demo
            containerDefinitions:
              - name: web
                image: placeholder
                portMappings: [{containerPort: 8000}]
            """,
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return config.load(tmp_path, "staging", environ={})


def checked(cfg: config.Config) -> None:
    path, name = template_path(cfg)
    check_static(cfg, load_template(path, name=name))


def test_a_good_project_passes_the_static_checks(tmp_path: Path) -> None:
    checked(project(tmp_path))


@pytest.mark.parametrize(
    ("ecs_extra", "secrets", "message"),
    [
        (
            "container: app",
            "aws-sm:db#url",
            "deploy/ecs/taskdef.yaml: ecs.container `app` names no container of the template "
            "(containers: web)",
        ),
        (
            "services: {worker: demo}",
            "aws-sm:db#url",
            "processes web and worker would both deploy ECS service demo; "
            "give each its own in `ecs.services`",
        ),
        (
            "task_definition: deploy/ecs/other.yaml",
            "aws-sm:db#url",
            "deploy/ecs/other.yaml: no such task definition template (ecs.task_definition)",
        ),
        ("", "env:DB_URL", "ECS reads secrets by reference from Secrets Manager or SSM only"),
    ],
)
def test_static_checks_name_the_file_and_what_is_wrong(
    tmp_path: Path, ecs_extra: str, secrets: str, message: str
) -> None:
    cfg = project(tmp_path, ecs_extra, secrets)
    with pytest.raises(ConfigError) as exc:
        checked(cfg)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_http_port_must_be_one_the_app_container_maps(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    path = tmp_path / "deploy/ecs/taskdef.yaml"
    path.write_text(path.read_text().replace("8000", "8080"))
    with pytest.raises(ConfigError) as exc:
        checked(cfg)
    assert str(exc.value) == (
        "deploy/ecs/taskdef.yaml: container web maps port(s) 8080 but process web serves on 8000 "
        "(processes.web.port)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("containerDefinitions: [{name: web}]\n", "missing `family`"),
        ("family: demo\ncontainerDefinitions: [{image: x}]\n", "containerDefinitions[0] has no `name`"),
        ("family: demo\ncontainerDefinitions: [{name: web, imagee: x}]\n", "did you mean `image`?"),
        ("family: demo\n", "expected a task definition with containerDefinitions"),
    ],
)
def test_a_bad_template_is_named_by_its_configured_path(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "taskdef.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_template(path, name="deploy/ecs/taskdef.yaml")
    assert str(exc.value).startswith("deploy/ecs/taskdef.yaml")
    assert message in str(exc.value)


# A container that is fine; each case below breaks one key of it (or of the template).
GOOD_CONTAINER = "name: web, image: x, portMappings: [{containerPort: 8000}], command: [serve]"


@pytest.mark.parametrize(
    ("containers", "message"),
    [
        (
            "[{name: web, environment: {A: '1'}}]",
            "containerDefinitions[0] (web): `environment` must be a list of {name, value} mappings, "
            "got a mapping; write one `- {name: ..., value: ...}` per entry",
        ),
        (
            "[{name: web, environment: [{name: A}]}]",
            "containerDefinitions[0] (web): `environment[0]` (A) needs a string `value`, got nothing",
        ),
        (
            "[{name: web, environment: [A=1]}]",
            "containerDefinitions[0] (web): `environment[0]` must be a {name, value} mapping, got a string",
        ),
        (
            "[{name: web, secrets: [{name: DB, value: arn:x}]}]",
            "containerDefinitions[0] (web): `secrets[0]` (DB) needs a string `valueFrom`, got nothing",
        ),
        (
            "[{name: web, secrets: [{valueFrom: arn:x}]}]",
            "containerDefinitions[0] (web): `secrets[0]` needs a string `name`, got nothing",
        ),
        (
            "[{name: web, portMappings: {containerPort: 8000}}]",
            "containerDefinitions[0] (web): `portMappings` must be a list of {containerPort, protocol} "
            "mappings, got a mapping",
        ),
        (
            "[{name: web, portMappings: ['8000:8000']}]",
            "containerDefinitions[0] (web): `portMappings[0]` must be a mapping, got a string",
        ),
        (
            "[{name: web, portMappings: [{containerPort: '8000'}]}]",
            "containerDefinitions[0] (web): `portMappings[0]` needs an integer `containerPort`, got a string",
        ),
        (
            "[{name: web, command: python -m app}]",
            "containerDefinitions[0] (web): `command` must be a list of strings (exec form), got a string",
        ),
        (
            "[{name: web, command: [sleep, 5]}]",
            "containerDefinitions[0] (web): `command[1]` must be a string (quote it), got an integer",
        ),
        (
            "[{" + GOOD_CONTAINER + "}, {name: proxy, entryPoint: {sh: -c}}]",
            "containerDefinitions[1] (proxy): `entryPoint` must be a list of strings (exec form), "
            "got a mapping",
        ),
        (
            "{web: {image: x}}",
            "containerDefinitions must be a list of container mappings, got a mapping",
        ),
        (
            "[{" + GOOD_CONTAINER + "}, web]",
            "containerDefinitions[1] must be a container mapping, got a string",
        ),
        ("[{name: 7, image: x}]", "containerDefinitions[0]: `name` must be a string, got an integer"),
    ],
    ids=[
        "environment-compose-mapping",
        "environment-without-value",
        "environment-item-a-string",
        "secrets-without-valueFrom",
        "secrets-without-name",
        "portMappings-a-mapping",
        "portMappings-item-a-string",
        "portMappings-port-a-string",
        "command-a-string",
        "command-item-a-number",
        "entryPoint-a-mapping",
        "containerDefinitions-a-mapping",
        "containerDefinitions-item-a-string",
        "containerDefinitions-name-a-number",
    ],
)
def test_a_wrongly_shaped_template_is_one_line_naming_the_container_and_key(
    tmp_path: Path, containers: str, message: str
) -> None:
    path = tmp_path / "taskdef.yaml"
    path.write_text(f"family: demo\ncontainerDefinitions: {containers}\n")
    with pytest.raises(ConfigError) as exc:
        load_template(path, name="deploy/ecs/taskdef.yaml")
    assert str(exc.value) == f"deploy/ecs/taskdef.yaml: {message}"


def test_a_well_shaped_template_loads_and_renders(tmp_path: Path) -> None:
    path = tmp_path / "taskdef.yaml"
    path.write_text(
        "family: demo\n"
        "containerDefinitions:\n"
        "  - {" + GOOD_CONTAINER + ", entryPoint: [/init], environment: [{name: N, value: 1}],"
        " secrets: [{name: S, valueFrom: 'arn:x'}]}\n"
        "  - {name: proxy, image: y, environment: null, portMappings: [{containerPortRange: '9000-9001'}]}\n"
    )
    app = container(render(load_template(path), WEB, family="demo", container="web", inputs=INPUTS), "web")
    assert pairs(app["environment"], "value")["N"] == "1"
    assert pairs(app["secrets"], "valueFrom")["S"] == "arn:x"
