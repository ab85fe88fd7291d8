"""The pipeline definition: validation, local scheduling and the generated CI files."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from conveyor import config, pipeline
from conveyor.config import CiSpec
from conveyor.doctor import python_versions
from conveyor.errors import ConfigError
from conveyor.runner import Result
from conveyor.tasks import task_names
from tests.conftest import REPO, Project

TASKS = {"lint", "typecheck", "test", "build", "image.smoke", "deploy", "ci"}
DEFAULT_CI = CiSpec(
    install="python -m pip install -e '.[dev]'",
    default_branch="",
    python="3.12",
    gitlab_image="python:3.12",
    docker_service="docker:dind",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_repo_pipeline_is_valid_and_ordered() -> None:
    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    order = pipe.order()
    assert order.index("build") > order.index("tests")
    assert order[-2:] == ["deploy-staging", "deploy-production"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "stages:\n- {name: a, run: lint, needs: [b]}\n- {name: b, run: lint, needs: [a]}\n",
            "the needs of a, b form a cycle",
        ),
        ("stages:\n- {name: a, run: lnt}\n", "stage a runs unknown task `lnt` (see `invoke --list`)"),
        ("stages:\n- {name: a, run: lint, needs: [zz]}\n", "stage a needs unknown stage `zz`"),
        ("stages:\n- {name: a, run: lint}\n- {name: a, run: test}\n", "duplicate stage name `a`"),
        ("stages:\n- {name: a, run: lint, when: sometimes}\n", "`when` must be one of"),
        ("stages:\n- {name: a, run: lint, nedds: [b]}\n", "unknown key `nedds`"),
        ("stages: []\n", "expected `stages:` with a list of stages"),
        ("stages: [\n", "pipeline.yaml:2: malformed YAML"),
    ],
)
def test_bad_pipelines_fail_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pipeline.load(write(tmp_path, text), TASKS)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_flag_values_are_not_mistaken_for_tasks(tmp_path: Path) -> None:
    pipe = pipeline.load(write(tmp_path, "stages:\n- {name: d, run: deploy --env staging}\n"), TASKS)
    assert pipe.stages[0].argv == ["invoke", "deploy", "--env", "staging"]


def repo_ci() -> CiSpec:
    return config.load(REPO, None, environ={}).ci


def test_committed_ci_files_are_the_golden_renders() -> None:
    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    pythons = python_versions(REPO / "pyproject.toml")
    ci = repo_ci()
    branch = ci.default_branch or "main"  # what git answers in a clone of this repository
    assert (REPO / pipeline.GITHUB_FILE).read_text() == pipeline.render_github(pipe, pythons, ci, branch)
    assert (REPO / pipeline.GITLAB_FILE).read_text() == pipeline.render_gitlab(pipe, pythons, ci)


def test_renders_are_thin_and_shaped_as_asked() -> None:
    import yaml

    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    pythons = python_versions(REPO / "pyproject.toml")
    ci = repo_ci()
    github = yaml.safe_load(pipeline.render_github(pipe, pythons, ci, "main"))
    gitlab = yaml.safe_load(pipeline.render_gitlab(pipe, pythons, ci))
    for job in github["jobs"].values():
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert runs[0] == ci.install
        assert len(runs) == 2
        assert runs[1].startswith("invoke ")
    assert github["jobs"]["tests"]["strategy"]["matrix"]["python"] == pythons
    assert github["jobs"]["deploy-production"]["environment"] == {"name": "production"}
    assert gitlab["tests"]["parallel"]["matrix"] == [{"PYTHON": pythons}]
    assert gitlab["deploy-production"]["rules"][0]["when"] == "manual"
    assert gitlab["deploy-staging"]["environment"] == {"name": "staging"}
    assert gitlab["tests"]["artifacts"]["reports"]["junit"] == "reports/junit-*.xml"
    assert all(
        len(job["script"]) == 1 for name, job in gitlab.items() if isinstance(job, dict) and "script" in job
    )


# --- rendering for any project ------------------------------------------------------------------------

SMALL = "stages:\n- {name: tests, run: test, matrix: python}\n- {name: build, run: build, engine: docker}\n"
SMALL += "- {name: ship, run: deploy, needs: [build], when: default-branch, deploy: staging}\n"


def renders(tmp_path: Path, ci: CiSpec, branch: str = "main") -> tuple[dict, dict]:
    import yaml

    pipe = pipeline.load(write(tmp_path, SMALL), TASKS)
    github = yaml.safe_load(pipeline.render_github(pipe, ["3.11", "3.12"], ci, branch))
    gitlab = yaml.safe_load(pipeline.render_gitlab(pipe, ["3.11", "3.12"], ci))
    return github, gitlab


def test_ci_settings_land_in_both_files(tmp_path: Path) -> None:
    ci = CiSpec(
        install="pip install -r requirements-ci.txt",
        default_branch="trunk",
        python="3.11",
        gitlab_image="registry.example.com/py:3.11",
        docker_service="docker:27-dind",
    )
    github, gitlab = renders(tmp_path, ci, branch="trunk")
    assert github["on"]["push"]["branches"] == ["trunk"]
    assert github["jobs"]["ship"]["if"] == "github.ref == 'refs/heads/trunk'"
    for job in github["jobs"].values():
        assert {"run": "pip install -r requirements-ci.txt"} in job["steps"]
    setup = {name: job["steps"][1]["with"]["python-version"] for name, job in github["jobs"].items()}
    assert setup == {"tests": "${{ matrix.python }}", "build": "3.11", "ship": "3.11"}
    assert gitlab["default"]["image"] == "registry.example.com/py:3.11"
    assert gitlab["default"]["before_script"] == ["pip install -r requirements-ci.txt"]
    assert gitlab["tests"]["image"] == "python:$PYTHON"  # the matrix keeps one image per Python
    assert gitlab["build"]["services"] == ["docker:27-dind"]
    assert gitlab["build"]["variables"] == {"DOCKER_HOST": "tcp://docker:2375", "DOCKER_TLS_CERTDIR": ""}
    assert gitlab["ship"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]


@pytest.mark.parametrize("service", ["none", "", "None"])
def test_docker_service_none_means_no_service(tmp_path: Path, service: str) -> None:
    _, gitlab = renders(tmp_path, dataclasses.replace(DEFAULT_CI, docker_service=service))
    assert "services" not in gitlab["build"]
    assert "variables" not in gitlab["build"]


@pytest.mark.parametrize(
    ("service", "expected", "variables"),
    [
        ("docker:dind", ["docker:dind"], True),
        (
            "mirror.example.com/library/docker:24-dind",
            [{"name": "mirror.example.com/library/docker:24-dind", "alias": "docker"}],
            True,
        ),
        ("podman-service:latest", ["podman-service:latest"], False),
        ("docker:24-dind-rootless", ["docker:24-dind-rootless"], False),
    ],
)
def test_docker_variables_only_for_a_dind_service(
    tmp_path: Path, service: str, expected: list, variables: bool
) -> None:
    _, gitlab = renders(tmp_path, dataclasses.replace(DEFAULT_CI, docker_service=service))
    assert gitlab["build"]["services"] == expected
    assert ("variables" in gitlab["build"]) is variables


def test_empty_install_leaves_the_step_out(tmp_path: Path) -> None:
    github, gitlab = renders(tmp_path, dataclasses.replace(DEFAULT_CI, install=""))
    assert [s["run"] for s in github["jobs"]["build"]["steps"] if "run" in s] == ["invoke build"]
    assert "before_script" not in gitlab["default"]


def test_an_empty_python_matrix_is_a_config_error(tmp_path: Path) -> None:
    pipe = pipeline.load(write(tmp_path, SMALL), TASKS)
    for render in (
        lambda: pipeline.render_github(pipe, [], DEFAULT_CI, "main"),
        lambda: pipeline.render_gitlab(pipe, [], DEFAULT_CI),
    ):
        with pytest.raises(ConfigError) as exc:
            render()
        message = str(exc.value)
        assert message.startswith("pyproject.toml: stage tests has `matrix: python`")
        assert '"Programming Language :: Python :: 3.12"' in message
        assert "\n" not in message


def test_no_matrix_stage_needs_no_classifiers(tmp_path: Path) -> None:
    pipe = pipeline.load(write(tmp_path, "stages:\n- {name: lint, run: lint}\n"), TASKS)
    assert "invoke lint" in pipeline.render_github(pipe, [], DEFAULT_CI, "main")


@pytest.mark.parametrize(
    ("configured", "origin_head", "init_default", "current", "expected"),
    [
        ("release", "origin/main", "master", "main", "release"),  # configured wins, git is not asked
        ("", "origin/develop", "master", "main", "develop"),
        ("", "origin/feature/x", "", "", "feature/x"),  # only the remote's prefix is stripped
        ("", "", "trunk", "main", "trunk"),
        ("", "", "", "master", "master"),
        ("", "", "", "main", "main"),
        ("", "", "", "my-feature", "main"),  # an arbitrary current branch is not a default branch
        ("", "", "", "", "main"),  # detached HEAD, no git at all
    ],
)
def test_default_branch_decision(
    configured: str, origin_head: str, init_default: str, current: str, expected: str
) -> None:
    chosen = pipeline.choose_default_branch(
        configured, origin_head=origin_head, init_default=init_default, current=current
    )
    assert chosen == expected


class FakeGit:
    """Answers the git queries default_branch() makes; records them."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, ...]] = []

    def run(self, argv: list[str], **kwargs: object) -> Result:
        assert kwargs["mutates"] is False
        assert kwargs["capture"] is True
        self.asked.append(tuple(argv))
        key = " ".join(argv[1:])
        if key in self.answers:
            return Result(tuple(argv), 0, self.answers[key] + "\n")
        return Result(tuple(argv), 128, "", "fatal: not a symbolic ref")


def test_default_branch_asks_git_only_when_not_configured(tmp_path: Path) -> None:
    git = FakeGit({"symbolic-ref --short -q HEAD": "master"})
    assert pipeline.default_branch(git, tmp_path) == "master"  # type: ignore[arg-type]
    assert len(git.asked) == 3
    git = FakeGit({"symbolic-ref --short -q refs/remotes/origin/HEAD": "origin/develop"})
    assert pipeline.default_branch(git, tmp_path) == "develop"  # type: ignore[arg-type]
    git = FakeGit({})
    assert pipeline.default_branch(git, tmp_path, "trunk", "invoke.yaml:7") == "trunk"  # type: ignore[arg-type]
    assert git.asked == []


def test_an_unusable_branch_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invoke.yaml:7: `ci.default_branch` cannot be used"):
        pipeline.default_branch(FakeGit({}), tmp_path, "x' || true || '", "invoke.yaml:7")  # type: ignore[arg-type]


def test_ci_render_refuses_an_empty_matrix(project: Project) -> None:
    project.write("ci/pipeline.yaml", "stages:\n- {name: tests, run: test, matrix: python}\n")
    project.write("pyproject.toml", '[project]\nname = "demo"\nrequires-python = ">=3.10"\n')
    for task in ("ci.render", "ci.check"):
        result = project.invoke(task)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "pyproject.toml: stage tests has `matrix: python`" in lines[0]
        assert not (project.root / pipeline.GITHUB_FILE).exists()
        assert not (project.root / pipeline.GITLAB_FILE).exists()


def test_ci_render_then_check_in_a_new_project(project: Project) -> None:
    project.write("ci/pipeline.yaml", SMALL)
    project.write(
        "pyproject.toml",
        '[project]\nname = "demo"\nclassifiers = ["Programming Language :: Python :: 3.12"]\n',
    )
    project.write(
        "invoke.yaml",
        """
        conveyor:
          project:
            name: demo
          image:
            name: demo-app
          ci:
            install: python -m pip install -e .
            default_branch: trunk
            docker_service: none
        """,
    )
    assert project.invoke("ci.render").returncode == 0
    github = (project.root / pipeline.GITHUB_FILE).read_text()
    assert "- trunk" in github
    assert "python -m pip install -e .\n" in github
    assert "docker:dind" not in (project.root / pipeline.GITLAB_FILE).read_text()
    result = project.invoke("ci.check")
    assert result.returncode == 0, result.stdout + result.stderr


# --- local scheduling --------------------------------------------------------------------------------


def stage(name: str, needs: tuple[str, ...] = (), run: str = "0.3") -> pipeline.Stage:
    return pipeline.Stage(name=name, run=run, needs=needs)


SLEEP_THEN_EXIT = [
    sys.executable,
    "-c",
    "import sys, time; time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))",
]


def test_independent_stages_overlap_in_time(tmp_path: Path) -> None:
    stages = [stage("a", run="0.5 0"), stage("b", run="0.5 0"), stage("c", ("a", "b"), run="0 0")]
    results = {r.name: r for r in pipeline.run_local(stages, jobs=2, logs=tmp_path, command=SLEEP_THEN_EXIT)}
    a, b, c = results["a"], results["b"], results["c"]
    assert a.started < b.ended
    assert b.started < a.ended  # the two windows overlap: they ran at the same time
    assert c.started >= max(a.ended, b.ended)  # c waited for both
    assert {r.status for r in results.values()} == {"passed"}


def test_a_failed_stage_skips_its_dependents_only(tmp_path: Path) -> None:
    stages = [
        stage("a", run="0 3"),
        stage("b", ("a",), run="0 0"),
        stage("c", ("b",), run="0 0"),
        stage("d", run="0 0"),
    ]
    results = {r.name: r for r in pipeline.run_local(stages, jobs=2, logs=tmp_path, command=SLEEP_THEN_EXIT)}
    assert results["a"].status == "failed"
    assert results["b"].status == "skipped"
    assert results["b"].reason == "a did not pass"
    assert results["c"].status == "skipped"
    assert results["d"].status == "passed"


def test_skips_cascade_whatever_the_definition_order(tmp_path: Path) -> None:
    stages = [stage("c", ("b",), run="0 0"), stage("b", ("a",), run="0 0"), stage("a", run="0 1")]
    results = {
        r.name: r.status for r in pipeline.run_local(stages, jobs=1, logs=tmp_path, command=SLEEP_THEN_EXIT)
    }
    assert results == {"a": "failed", "b": "skipped", "c": "skipped"}


def test_select_leaves_deploys_out_unless_asked() -> None:
    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    names = [s.name for s in pipeline.select(pipe, only=[], skip=["security"], with_deploy=False)]
    assert names == ["lint", "typecheck", "tests", "build"]
    with pytest.raises(ConfigError, match="unknown stage `lnt`"):
        pipeline.select(pipe, only=["lnt"], skip=[], with_deploy=False)
