"""The task menu as a user meets it: `invoke` in a project, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import pytest

from tests.conftest import Project

TOP_LEVEL = {"lint", "typecheck", "test", "security", "doctor"}


def test_menu_lists_tasks_with_one_line_docstrings(project: Project) -> None:
    result = project.invoke("--list")
    assert result.returncode == 0, result.stderr
    names = {
        line.split()[0] for line in result.stdout.splitlines()[2:] if line.startswith("  ") and line.split()
    }
    assert names >= TOP_LEVEL
    assert {"env.list", "env.show"} <= names


def test_every_task_has_a_one_line_docstring() -> None:
    from conveyor.tasks import namespace

    def walk(coll):
        yield from coll.tasks.values()
        for sub in coll.collections.values():
            yield from walk(sub)

    for t in walk(namespace()):
        doc = (t.__doc__ or "").strip()
        assert doc, t.name
        assert "\n" not in doc, t.name


def test_env_show_prints_sources_and_hides_secrets(project: Project) -> None:
    result = project.invoke("env.show", env={"DB_PASSWORD": "hunter2-sentinel"})
    assert result.returncode == 0, result.stderr
    assert "image.name" in result.stdout
    assert "invoke.yaml:5" in result.stdout
    assert "not-for-your-eyes" not in result.stdout
    assert "hunter2-sentinel" not in result.stdout


def test_env_list(project: Project) -> None:
    project.write(
        "deploy/environments/staging.yaml", "target: ecs\necs: {cluster: c, service: s, region: r}\n"
    )
    result = project.invoke("env.list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["local", "compose", "http://127.0.0.1:8080"]
    assert "staging" in result.stdout


@pytest.mark.parametrize(
    ("args", "files", "code", "message"),
    [
        (["env.show", "--env", "nope"], {}, 2, "unknown environment `nope`; known: local"),
        (["env.show", "--env", "../x"], {}, 2, "--env: `../x` is not an environment name"),
        (["env.show"], {"deploy/environments/local.yaml": "target: [\n"}, 2, "local.yaml:2: malformed YAML"),
        (
            ["env.show"],
            {"deploy/environments/local.yaml": "target: compose\nurll: x\n"},
            2,
            "did you mean `url`?",
        ),
        (["env.show"], {"deploy/environments/local.yaml": ""}, 2, "the file is empty"),
        (["doctor", "--env", "nope"], {}, 2, "unknown environment `nope`"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    project: Project, args: list[str], files: dict[str, str], code: int, message: str
) -> None:
    for rel, text in files.items():
        project.write(rel, text)
    result = project.invoke(*args)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert result.stdout == ""


def test_an_http_process_without_a_url_is_refused_before_anything_happens(project: Project) -> None:
    project.write("deploy/environments/local.yaml", "target: compose\ncompose:\n  files: [compose.yaml]\n")
    project.write(
        "build/release.json", '{"refs": ["demo-app:abc"], "image_id": "sha256:1", "git_sha": "abc"}'
    )
    result = project.invoke("deploy")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: deploy/environments/local.yaml: process `web` serves HTTP, so the environment needs `url` "
        "(where the smoke probe reaches it)"
    )
    assert not (project.root / ".conveyor").exists()  # no lock taken, nothing journaled


def test_dry_lock_release_force_leaves_the_lock_in_place(project: Project) -> None:
    from conveyor.deploy.locks import FileLock
    from conveyor.deploy.model import Owner

    lock = FileLock(project.root, "local")
    lock.acquire(Owner("alice", "ci-7", 42, "d" * 40), ttl=60)
    result = project.invoke("--dry", "lock.release", "--force")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[dry] would break the lock of local held by alice@ci-7 (pid 42")
    assert lock.holder() is not None
