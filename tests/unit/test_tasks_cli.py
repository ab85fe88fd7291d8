"""The task menu as a user meets it: `invoke` in a project, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

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


KUBECONFIG_GONE = """
apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: gone, context: {cluster: gone, user: u}}]
users: [{name: u, user: {token: x}}]
current-context: gone
"""


def test_history_without_a_cluster_still_prints_the_local_journal_and_names_what_failed(
    project: Project,
) -> None:
    from conveyor.deploy.journal import FileJournal

    project.write(
        "deploy/environments/production.yaml",
        """
        target: k8s
        url: https://shop.example.com
        registry: registry.example.com/shop
        k8s:
          overlay: k8s/overlays/production
          namespace: shop
        """,
    )
    project.write("k8s/overlays/production/kustomization.yaml", "resources: []\n")
    kubeconfig = project.write("kubeconfig", KUBECONFIG_GONE)
    FileJournal(project.root, "production").record(
        {"action": "deploy", "git_sha": "c" * 40, "image": "img", "result": "failed", "duration": 2.0}
    )
    result = project.invoke("history", "--env", "production", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "conveyor: journal ConfigMaps shop/conveyor-journal-production-* unreachable (kubectl get: "
        "The connection to the server 127.0.0.1:9 was refused - did you specify the right host or port?)"
    )
    assert "  unavailable: k8s: " in result.stdout
    assert "this checkout's own file .conveyor/history/production.jsonl:" in result.stdout
    assert "  1  " in result.stdout
    assert "cccccccccccc  failed" in result.stdout


def test_history_of_a_compose_environment_reads_the_local_file(project: Project) -> None:
    result = project.invoke("history")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no deploys recorded for local in .conveyor/history/local.jsonl"


TRUNCATED = '{"refs": ["demo-app:abc"], "image_id": "sha256:1", "git_sha": "ab'
PYPROJECT = """
[project]
name = "demo"
version = "1"
classifiers = [
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
]
"""


@pytest.mark.parametrize(
    ("args", "files", "env", "message"),
    [
        (
            ["deploy"],
            {"build/release.json": TRUNCATED},
            {},
            "conveyor: build/release.json: not valid JSON (Unterminated string starting at: "
            "line 1 column 63); run `invoke build` again",
        ),
        (
            ["plan"],
            {"build/release.json": "[1, 2]"},
            {},
            "conveyor: build/release.json: expected a JSON object, got list; run `invoke build` again",
        ),
        (
            ["deploy"],
            {"build/release.json": '{"refs": ["demo-app:abc"], "image_id": "sha256:1"}'},
            {},
            "conveyor: build/release.json: `git_sha` missing or not a string; run `invoke build` again",
        ),
        (
            ["deploy"],
            {"build/release.json": '{"refs": "demo-app:abc", "image_id": "sha256:1", "git_sha": "abc"}'},
            {},
            "conveyor: build/release.json: `refs` must be a non-empty list of image:tag strings; "
            "run `invoke build` again",
        ),
        (
            ["deploy"],
            {"deploy/environments/local.yaml": "target: compose\ndeploy:\n  timeout: -5\n"},
            {},
            "conveyor: deploy/environments/local.yaml:3: `deploy.timeout` must be 1 or more, got -5",
        ),
        (
            ["env.show"],
            {},
            {"CONVEYOR_DEPLOY__DRAIN_SECONDS": "-1"},
            "`deploy.drain_seconds` must be 0 or more, got -1",
        ),
        (
            ["env.show"],
            {"deploy/environments/local.yaml": "target: compose\ndeploy:\n  keep_revisions: 0\n"},
            {},
            "conveyor: deploy/environments/local.yaml:3: `deploy.keep_revisions` must be 1 or more, got 0",
        ),
        (
            ["ci", "--jobs", "-1"],
            {},
            {},
            "conveyor: --jobs -1: expected 1 or more stages at once (0: one per core)",
        ),
        (
            ["promote", "--from", "staging", "--to", "staging"],
            {},
            {},
            "conveyor: --from staging --to staging: promote moves a release to ANOTHER environment",
        ),
        (
            ["test", "--python", "2.7"],
            {"pyproject.toml": PYPROJECT},
            {},
            "conveyor: --python 2.7: not in the test matrix (3.11, 3.12, from the "
            "`Programming Language :: Python :: 3.X` classifiers of pyproject.toml)",
        ),
        (
            ["rollback", "--to", "-1"],
            {},
            {},
            "conveyor: --to -1: expected a history entry number (1 or more; see `invoke history`)",
        ),
        (["history", "--limit", "0"], {}, {}, "conveyor: --limit 0: expected 1 or more entries"),
        (
            ["rollback", "--to", "3"],
            {},
            {},
            "conveyor: the journal of local (.conveyor/history/local.jsonl) has no entry 3 "
            "(see `invoke history`)",
        ),
    ],
)
def test_bad_input_is_one_line_a_nonzero_exit_and_changes_nothing(
    project: Project, args: list[str], files: dict[str, str], env: dict[str, str], message: str
) -> None:
    for rel, text in files.items():
        project.write(rel, text)
    before = sorted(p.relative_to(project.root) for p in project.root.rglob("*"))
    result = project.invoke(*args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert sorted(p.relative_to(project.root) for p in project.root.rglob("*")) == before  # no file written


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"scanners": [{"name": "bandit", "sta', "not valid JSON (Unterminated string starting at"),
        ('{"scanners": {"bandit": "passed"}}', "expected an object with a `scanners` list"),
        ('{"scanners": [{"name": "bandit"}]}', "scanners[0] needs `name`, `status` and `counts`"),
        (
            '{"scanners": [{"name": "bandit", "status": "passed", "counts": {"high": "2"}}]}',
            "scanners[0] needs `name`, `status` and `counts` (severity: number)",
        ),
    ],
)
def test_a_truncated_or_wrong_shaped_security_record_refuses_the_promotion_in_one_line(
    tmp_path: Path, record: str, message: str
) -> None:
    from conveyor import supply

    digest = "sha256:" + "4" * 64
    sbom = supply.sbom_path(tmp_path, digest)
    sbom.parent.mkdir(parents=True)
    sbom.write_text("{}")
    path = supply.record_path(tmp_path, "d" * 40)
    path.parent.mkdir(parents=True)
    path.write_text(record)
    with pytest.raises(supply.PromotionRefused) as exc:
        supply.gate(tmp_path, f"registry.test/app@{digest}", "d" * 40, "medium")
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(f"reports/security/record-{'d' * 40}.json: ")
    assert message in text
    assert text.endswith("run `invoke security` again")
