"""Config: one test per layer (each later layer beats the one before) and every bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conveyor import config
from conveyor.errors import ConfigError, SecretError, UsageError
from conveyor.secrets import SecretRef
from tests.conftest import Project


def load(project: Project, env: str | None = None, environ: dict[str, str] | None = None, flags=None):
    return config.load(project.root, env, environ=environ or {}, flags=flags)


def test_kit_defaults_apply_when_nothing_overrides(project: Project) -> None:
    cfg = load(project)
    assert cfg.image.max_size_mb == config.SCHEMA["image.max_size_mb"].default
    assert cfg.values["image.max_size_mb"].source == "default"


def test_invoke_yaml_beats_defaults_and_names_its_line(project: Project) -> None:
    cfg = load(project)
    assert cfg.image.name == "demo-app"
    assert cfg.values["image.name"].source == "invoke.yaml:5"


def test_environment_file_beats_invoke_yaml(project: Project) -> None:
    project.write(
        "deploy/environments/local.yaml",
        "target: compose\ncompose: {files: [a.yaml]}\nimage:\n  name: other\n",
    )
    cfg = load(project)
    assert cfg.image.name == "other"
    assert cfg.values["image.name"].source == "deploy/environments/local.yaml:4"


def test_dotenv_files_beat_environment_file_and_env_specific_beats_plain(project: Project) -> None:
    project.write(".env", "CONVEYOR_IMAGE__NAME=from-dotenv\nCONVEYOR_URL=http://dotenv\n")
    project.write(".env.local", "CONVEYOR_IMAGE__NAME=from-dotenv-local\n")
    cfg = load(project)
    assert cfg.image.name == "from-dotenv-local"
    assert cfg.values["image.name"].source == ".env.local CONVEYOR_IMAGE__NAME"
    assert cfg.env.url == "http://dotenv"


def test_process_environment_beats_dotenv(project: Project) -> None:
    project.write(".env", "CONVEYOR_IMAGE__MAX_SIZE_MB=100\n")
    cfg = load(project, environ={"CONVEYOR_IMAGE__MAX_SIZE_MB": "250"})
    assert cfg.image.max_size_mb == 250
    assert cfg.values["image.max_size_mb"].source == "env CONVEYOR_IMAGE__MAX_SIZE_MB"


def test_cli_flags_beat_everything(project: Project) -> None:
    cfg = load(project, environ={"CONVEYOR_IMAGE__TARGET": "test"}, flags={"image.target": "builder"})
    assert cfg.image.target == "builder"
    assert cfg.values["image.target"].source == "flag --target"


def test_env_selected_by_conveyor_env_variable(project: Project) -> None:
    project.write("deploy/environments/qa.yaml", "target: compose\ncompose: {files: [x.yaml]}\n")
    assert load(project, environ={"CONVEYOR_ENV": "qa"}).env.name == "qa"


def test_config_is_frozen(project: Project) -> None:
    cfg = load(project)
    with pytest.raises(AttributeError):
        cfg.image.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.env.vars["NEW"] = "x"  # type: ignore[index]


def test_secrets_are_parsed_references(project: Project) -> None:
    assert load(project).env.secrets["DB_PASSWORD"] == SecretRef("env", "DB_PASSWORD")


def test_describe_masks_secret_looking_vars_and_never_resolves_secrets(project: Project) -> None:
    rows = {key: val for key, val, _ in config.describe(load(project, environ={"DB_PASSWORD": "hunter2"}))}
    assert rows["vars.API_TOKEN"] == "***"
    assert rows["vars.LOG_LEVEL"] == "info"
    assert "hunter2" not in str(rows)
    assert rows["secrets.DB_PASSWORD"].startswith("<env:DB_PASSWORD>")


# --- bad input: one line naming the file/key, nothing else ------------------------------------------


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_unknown_environment_lists_known_ones(project: Project) -> None:
    with pytest.raises(ConfigError) as exc:
        load(project, "prod")
    assert "unknown environment `prod`; known: local" in one_line(exc)


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "Local", "x" * 60])
def test_path_like_env_name_is_refused(project: Project, name: str) -> None:
    with pytest.raises(UsageError) as exc:
        load(project, name)
    assert "--env" in one_line(exc)


def test_malformed_yaml_names_file_and_line(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: compose\ncompose:\n  files: [a, b\nurl: x\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc).startswith("local.yaml:4: malformed YAML")


def test_unknown_key_suggests_the_closest(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: compose\ncompose:\n  filez: [a]\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc) == (
        "deploy/environments/local.yaml:3: unknown key `compose.filez`; did you mean `compose.files`?"
    )


def test_unknown_conveyor_variable_is_refused(project: Project) -> None:
    with pytest.raises(ConfigError) as exc:
        load(project, environ={"CONVEYOR_IMAGE__NAM": "x"})
    assert "env CONVEYOR_IMAGE__NAM: unknown setting `image.nam`; did you mean `image.name`?" in one_line(exc)


def test_wrong_type_names_key_and_expected_type(project: Project) -> None:
    project.write("invoke.yaml", "conveyor:\n  image:\n    max_size_mb: big\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc) == "invoke.yaml:3: `image.max_size_mb` must be an integer, got str 'big'"


def test_url_must_be_http(project: Project) -> None:
    with pytest.raises(ConfigError) as exc:
        load(project, environ={"CONVEYOR_URL": "file:///etc/passwd"})
    assert (
        one_line(exc)
        == "env CONVEYOR_URL: `url` must be an http:// or https:// URL, got 'file:///etc/passwd'"
    )


def test_missing_required_key(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "url: http://x\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert "missing required key `target`" in one_line(exc)


def test_target_specific_required_key(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: ecs\necs: {cluster: c}\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert "target ecs needs key `ecs.service`" in one_line(exc)


def test_an_ecs_stack_names_cluster_and_service(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: ecs\necs: {stack: s, region: r}\n")
    assert load(project).env.ecs.stack == "s"


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("no", False), ("1", True)])
def test_a_bool_key_reads_words_and_yaml_booleans(project: Project, raw: str, expected: bool) -> None:
    assert load(project, environ={"CONVEYOR_INFRA__PROTECTED": raw}).env.infra.protected is expected
    project.write("invoke.yaml", f"conveyor:\n  infra:\n    protected: {raw}\n")
    assert load(project).env.infra.protected is expected


def test_a_bool_key_refuses_anything_else(project: Project) -> None:
    project.write("invoke.yaml", "conveyor:\n  infra:\n    protected: maybe\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc) == "invoke.yaml:3: `infra.protected` must be true or false, got str 'maybe'"


def test_unknown_target_kind(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: nomad\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert (
        one_line(exc)
        == "deploy/environments/local.yaml:1: `target` must be one of compose, ecs, k8s, got 'nomad'"
    )


def test_unreadable_dotenv(project: Project) -> None:
    (project.root / ".env.local").write_bytes(b"CONVEYOR_URL=\xff\xfe\n")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc) == ".env.local: cannot read: not valid UTF-8 text"


def test_dotenv_that_is_a_directory(project: Project) -> None:
    (project.root / ".env").mkdir()
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert one_line(exc).startswith(".env: cannot read:")


def test_secret_with_unknown_scheme(project: Project) -> None:
    project.write(
        "deploy/environments/local.yaml",
        "target: compose\ncompose: {files: [a]}\nsecrets:\n  X: vault:kv/x\n",
    )
    with pytest.raises(SecretError) as exc:
        load(project)
    assert "secrets.X: `vault:kv/x` is not a secret reference; expected one of env:" in one_line(exc)


def test_empty_environment_file(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "")
    with pytest.raises(ConfigError) as exc:
        load(project)
    assert "local.yaml: the file is empty" in one_line(exc)


# --- the app contract --------------------------------------------------------------------------------

CONTRACT = """\
conveyor:
  processes:
    web:
      command: [gunicorn, "shop.wsgi:application"]
      port: 9000
      health: /healthz
      version: none
    worker:
      command: python -m shop.worker
      healthcheck: [python, -m, shop.worker, --check]
  release:
    command: [python, manage.py, migrate]
"""


def test_the_app_contract_is_read_from_invoke_yaml(project: Project) -> None:
    project.write("invoke.yaml", CONTRACT)
    cfg = load(project)
    web, worker = cfg.app.processes
    assert cfg.app.web == web
    assert (web.command, web.port, web.health, web.version) == (
        ("gunicorn", "shop.wsgi:application"),
        9000,
        "/healthz",
        "",
    )
    assert worker.command == ("python", "-m", "shop.worker")  # a string is split like argv
    assert worker.healthcheck == ("python", "-m", "shop.worker", "--check")
    assert not worker.http
    assert cfg.app.release == ("python", "manage.py", "migrate")
    assert cfg.values["processes"].source == "invoke.yaml:2"
    rows = {key: value for key, value, _ in config.describe(cfg)}
    assert rows["processes.web"].startswith("command: gunicorn shop.wsgi:application; port 9000")
    assert rows["release.command"] == "python manage.py migrate"


def test_the_kit_default_contract_is_one_http_process_and_no_release_step(project: Project) -> None:
    cfg = load(project)
    assert [p.name for p in cfg.app.processes] == ["web"]
    assert cfg.app.web is not None
    assert cfg.app.web.command == ()  # the image's CMD
    assert cfg.app.release == ()


def test_an_environment_file_replaces_the_processes(project: Project) -> None:
    project.write("invoke.yaml", CONTRACT)
    project.write(
        "deploy/environments/local.yaml",
        "target: compose\ncompose: {files: [a.yaml]}\n"
        "processes:\n  web: {port: 8000, command: serve --reload}\n",
    )
    cfg = load(project)
    assert [p.name for p in cfg.app.processes] == ["web"]
    assert cfg.values["processes"].source == "deploy/environments/local.yaml:3"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  web: {port: 8000, comand: [x]}\n",
            r"invoke.yaml:3: unknown key `processes.web.comand`; did you mean `command`",
        ),
        (
            "  web: {port: 8000}\n  api: {port: 8001}\n",
            r"invoke.yaml:2: only one process can serve HTTP .* web, api",
        ),
        ("  web: {port: http}\n", r"invoke.yaml:3: `processes.web.port` must be a TCP port, got 'http'"),
        (
            "  web: {port: 8000, health: healthz}\n",
            r"invoke.yaml:3: `processes.web.health` must be a path like /health",
        ),
        (
            "  worker: {version: /version}\n",
            r"invoke.yaml:3: `processes.worker` has HTTP routes but no `port`",
        ),
        ("  Web_1: {}\n", r"invoke.yaml:3: process name 'Web_1': lowercase letters"),
        ("  web: {command: {a: b}}\n", r"`processes.web.command` must be a command \(a list of strings\)"),
        ("  []\n", r"invoke.yaml:2: `processes` must map process names to their settings, got a list"),
    ],
)
def test_a_bad_contract_names_the_file_line_and_key(project: Project, body: str, message: str) -> None:
    project.write("invoke.yaml", "conveyor:\n  processes:\n" + textwrap.indent(body, "  "))
    with pytest.raises(ConfigError, match=message):
        load(project)


def test_processes_cannot_come_from_a_variable(project: Project) -> None:
    with pytest.raises(ConfigError, match="env CONVEYOR_PROCESSES: `processes` is a mapping: set it in"):
        load(project, environ={"CONVEYOR_PROCESSES": "web"})


def test_the_release_command_from_a_variable_is_split_like_argv(project: Project) -> None:
    cfg = load(project, environ={"CONVEYOR_RELEASE__COMMAND": "python -m shop migrate --fake-initial"})
    assert cfg.app.release == ("python", "-m", "shop", "migrate", "--fake-initial")


def test_ecs_services_must_name_known_processes(project: Project) -> None:
    project.write("invoke.yaml", CONTRACT + "  ecs:\n    services: {wrker: shop-worker}\n")
    with pytest.raises(ConfigError, match=r"invoke.yaml:14: `ecs.services` names unknown process `wrker`"):
        load(project)


def test_the_readme_key_table_is_the_schema() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- keys:start -->\n", 1)[1].split("<!-- keys:end -->", 1)[0]
    assert block == config.schema_table(), "README key table drifted: paste `invoke env.keys` into it"


def test_the_variables_the_kit_hands_to_processes_are_not_read_as_settings(project: Project) -> None:
    """A kit running where its own shutdown/drain variables are set (inside an app container) still loads."""
    environ = {config.SHUTDOWN_VAR: "99", config.DRAIN_VAR: "3", "CONVEYOR_NOX_INSTALL": "always"}
    cfg = load(project, environ=environ)
    assert cfg.env.deploy.shutdown_timeout == config.SCHEMA["deploy.shutdown_timeout"].default
    with pytest.raises(ConfigError, match="CONVEYOR_SHUTDOWN_TIMEOUTS: unknown setting"):
        load(project, environ={"CONVEYOR_SHUTDOWN_TIMEOUTS": "20"})
