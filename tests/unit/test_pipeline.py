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

TASKS = {"lint", "typecheck", "test", "build", "image.smoke", "image.push", "deploy", "promote", "ci"}
DEFAULT_CI = CiSpec(
    install="python -m pip install -e '.[dev]'",
    default_branch="",
    python="3.12",
    gitlab_image="python:3.12",
    docker_service="docker:dind",
    gitlab_docker_image="python:3.12",
)
ENVS = {
    "staging": pipeline.EnvAccess("staging", "ecs", "eu-west-1", registry_committed=False),
    "production": pipeline.EnvAccess("production", "k8s", "", registry_committed=True),
    "local": pipeline.EnvAccess("local", "compose"),
}
DOCKER_TOOLS = (
    "docker buildx version >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq "
    "--no-install-recommends docker.io docker-buildx)"
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
    envs = pipeline.environment_access(REPO, pipe)
    branch = ci.default_branch or "main"  # what git answers in a clone of this repository
    github = pipeline.render_github(pipe, pythons, ci, branch, envs)
    assert (REPO / pipeline.GITHUB_FILE).read_text() == github
    assert (REPO / pipeline.GITLAB_FILE).read_text() == pipeline.render_gitlab(pipe, pythons, ci, envs)
    assert (REPO / pipeline.GITLAB_DIND_FILE).read_text() == pipeline.render_gitlab_dind(pipe, ci)


def repo_renders() -> tuple[dict, dict, dict]:
    import yaml

    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    pythons = python_versions(REPO / "pyproject.toml")
    ci = repo_ci()
    envs = pipeline.environment_access(REPO, pipe)
    github = yaml.safe_load(pipeline.render_github(pipe, pythons, ci, "main", envs))
    gitlab = yaml.safe_load(pipeline.render_gitlab(pipe, pythons, ci, envs))
    dind = yaml.safe_load(pipeline.render_gitlab_dind(pipe, ci) or "")
    return github, gitlab, dind


def test_renders_are_thin_and_shaped_as_asked() -> None:
    github, gitlab, _ = repo_renders()
    ci, pythons = repo_ci(), python_versions(REPO / "pyproject.toml")
    for job in github["jobs"].values():
        runs = [s["run"] for s in job["steps"] if "run" in s and "name" not in s]  # named: provisioning
        assert runs[0] == ci.install
        assert len(runs) == 2
        assert runs[1].startswith("invoke ")
    assert github["jobs"]["tests"]["strategy"]["matrix"]["python"] == pythons
    assert github["jobs"]["deploy-production"]["environment"] == {"name": "production"}
    assert gitlab["tests"]["parallel"]["matrix"] == [{"PYTHON": pythons}]
    assert gitlab["deploy-production"]["rules"][0]["when"] == "manual"
    assert gitlab["deploy-staging"]["environment"] == {"name": "staging"}
    assert gitlab["tests"]["artifacts"]["reports"]["junit"] == "reports/junit-*.xml"
    for name, job in gitlab.items():
        if isinstance(job, dict) and "script" in job:  # one task; before it only credential/cache set-up
            invokes = [line for line in job["script"] if "invoke " in line]
            assert invokes == [job["script"][-1]], name


def test_the_build_pushes_once_and_the_deploys_use_its_record() -> None:
    github, gitlab, _ = repo_renders()
    assert gitlab["build"]["script"][-1] == "invoke build image.smoke image.push --env staging"
    assert gitlab["build"]["artifacts"] == {"paths": ["build/release.json", "reports/sbom/"]}
    assert gitlab["deploy-staging"]["needs"] == [{"job": "build", "artifacts": True}]
    assert gitlab["deploy-staging"]["script"][-1] == "invoke deploy --env staging"
    # Production: the digest serving in staging, with the SBOM (build) and security record (security).
    assert gitlab["deploy-production"]["needs"] == [
        {"job": "deploy-staging", "artifacts": False},
        {"job": "build", "artifacts": True},
        {"job": "security", "artifacts": True},
    ]
    assert gitlab["deploy-production"]["script"][-1] == "invoke promote --from staging --to production"
    assert all(n["artifacts"] is False for n in gitlab["build"]["needs"])  # consumes nothing
    steps = github["jobs"]["deploy-staging"]["steps"]
    download = next(s for s in steps if s.get("uses") == "actions/download-artifact@v4")
    assert download["with"] == {"name": "build-build-release.json", "path": "build"}
    uploads = [
        s["with"] for s in github["jobs"]["build"]["steps"] if s.get("uses", "").startswith("actions/up")
    ]
    assert [(u["name"], u["path"]) for u in uploads] == [
        ("build-build-release.json", "build/release.json"),
        ("build-reports-sbom", "reports/sbom/"),
    ]
    assert all(u["if-no-files-found"] == "error" for u in uploads)


def test_repo_gitlab_images_come_from_variables_with_public_defaults() -> None:
    _, gitlab, dind = repo_renders()
    assert gitlab["variables"][pipeline.IMAGE_VAR] == "python:3.12"
    assert gitlab["variables"][pipeline.PYTHON_IMAGE_VAR] == "python"
    assert gitlab["variables"][pipeline.DOCKER_IMAGE_VAR] == "python:3.12"
    images = {name: job.get("image", gitlab["default"]["image"]) for name, job in gitlab.items()
              if isinstance(job, dict) and "script" in job}  # fmt: skip
    assert images == {
        "lint": "$CONVEYOR_CI__GITLAB_IMAGE",
        "typecheck": "$CONVEYOR_CI__GITLAB_IMAGE",
        "tests": "$CONVEYOR_CI__GITLAB_PYTHON_IMAGE:$PYTHON",
        "rules": "$CONVEYOR_CI__GITLAB_IMAGE",
        "security": "$CONVEYOR_CI__GITLAB_IMAGE",
        "build": "$CONVEYOR_CI__GITLAB_DOCKER_IMAGE",
        "deploy-staging": "$CONVEYOR_CI__GITLAB_IMAGE",
        "deploy-production": "$CONVEYOR_CI__GITLAB_IMAGE",
    }
    # The dind service lives only in the included file, which CONVEYOR_CI__DOCKER_SERVICE=none leaves out.
    assert "services" not in gitlab["build"]
    assert "DOCKER_HOST" not in gitlab["build"].get("variables", {})
    assert gitlab["include"] == [
        {"local": "ci/gitlab/dind.yml", "rules": [{"if": '$CONVEYOR_CI__DOCKER_SERVICE != "none"'}]}
    ]
    assert dind == {
        "build": {
            "services": ["docker:dind"],
            "variables": {"DOCKER_HOST": "tcp://docker:2375", "DOCKER_TLS_CERTDIR": ""},
        }
    }


# --- rendering for any project ------------------------------------------------------------------------

SMALL = "stages:\n- {name: tests, run: test, matrix: python}\n- {name: build, run: build, engine: docker}\n"
SMALL += "- {name: ship, run: deploy, needs: [build], when: default-branch, deploy: staging}\n"


def renders(tmp_path: Path, ci: CiSpec, branch: str = "main", text: str = SMALL) -> tuple[dict, dict]:
    import yaml

    pipe = pipeline.load(write(tmp_path, text), TASKS)
    github = yaml.safe_load(pipeline.render_github(pipe, ["3.11", "3.12"], ci, branch, ENVS))
    gitlab = yaml.safe_load(pipeline.render_gitlab(pipe, ["3.11", "3.12"], ci, ENVS))
    return github, gitlab


def dind(tmp_path: Path, ci: CiSpec) -> dict:
    import yaml

    return yaml.safe_load(
        pipeline.render_gitlab_dind(pipeline.load(write(tmp_path, SMALL), TASKS), ci) or "{}"
    )


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
    assert gitlab["default"]["image"] == "$CONVEYOR_CI__GITLAB_IMAGE"
    assert gitlab["variables"]["CONVEYOR_CI__GITLAB_IMAGE"] == "registry.example.com/py:3.11"
    assert (
        gitlab["variables"]["CONVEYOR_CI__GITLAB_DOCKER_IMAGE"] == "registry.example.com/py:3.11"
    )  # unset: the same
    assert gitlab["default"]["before_script"] == ["pip install -r requirements-ci.txt"]
    assert gitlab["tests"]["image"] == "$CONVEYOR_CI__GITLAB_PYTHON_IMAGE:$PYTHON"  # one image per Python
    assert dind(tmp_path, ci)["build"]["services"] == ["docker:27-dind"]
    assert dind(tmp_path, ci)["build"]["variables"] == {
        "DOCKER_HOST": "tcp://docker:2375",
        "DOCKER_TLS_CERTDIR": "",
    }
    assert gitlab["ship"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]


@pytest.mark.parametrize("service", ["none", "", "None"])
def test_docker_service_none_means_no_service(tmp_path: Path, service: str) -> None:
    _, gitlab = renders(tmp_path, dataclasses.replace(DEFAULT_CI, docker_service=service))
    assert "services" not in gitlab["build"]
    assert "include" not in gitlab
    assert dind(tmp_path, dataclasses.replace(DEFAULT_CI, docker_service=service)) == {}


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
    fragment = dind(tmp_path, dataclasses.replace(DEFAULT_CI, docker_service=service))
    assert fragment["build"]["services"] == expected
    assert ("variables" in fragment["build"]) is variables


def test_empty_install_leaves_the_step_out(tmp_path: Path) -> None:
    github, gitlab = renders(tmp_path, dataclasses.replace(DEFAULT_CI, install=""))
    assert [s["run"] for s in github["jobs"]["build"]["steps"] if "run" in s] == ["invoke build"]
    assert "before_script" not in gitlab["default"]
    assert gitlab["build"]["before_script"] == [DOCKER_TOOLS]  # only the provisioning


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
    assert names == ["lint", "typecheck", "tests", "rules", "build"]
    with pytest.raises(ConfigError, match="unknown stage `lnt`"):
        pipeline.select(pipe, only=["lnt"], skip=[], with_deploy=False)


# --- produces / consumes -------------------------------------------------------------------------------

FLOW = """
stages:
  - {name: tests, run: test, matrix: python, reports: true, packages: [postgresql, redis-server],
     produces: [reports/]}
  - {name: security, run: lint, produces: [reports/security/]}
  - name: build
    run: build image.smoke image.push --env staging
    needs: [tests, security]
    engine: docker
    produces: [build/release.json, reports/sbom/]
  - {name: stage, run: deploy --env staging, needs: [build], deploy: staging, consumes: [build/release.json]}
  - name: prod
    run: promote --from staging --to production
    needs: [stage]
    deploy: production
    when: manual
    consumes: [reports/sbom/, reports/security/record.json]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "stages:\n- {name: a, run: lint, produces: [x/]}\n- {name: b, run: lint, consumes: [x/]}\n",
            "pipeline.yaml: stage b consumes `x/`, which no stage in its needs produces",
        ),
        (
            "stages:\n- {name: a, run: lint, produces: [out.txt]}\n"
            "- {name: b, run: lint, needs: [a], consumes: [other.txt]}\n",
            "pipeline.yaml: stage b consumes `other.txt`, which no stage in its needs produces",
        ),
        (  # a file is not a directory: `out` does not hold `out/x`
            "stages:\n- {name: a, run: lint, produces: [out]}\n"
            "- {name: b, run: lint, needs: [a], consumes: [out/x]}\n",
            "stage b consumes `out/x`, which no stage in its needs produces",
        ),
        (
            "stages:\n- {name: a, run: lint, produces: ['../up']}\n",
            "pipeline.yaml: stage a: `produces` path '../up' must be a file or directory/ inside the project",
        ),
        ("stages:\n- {name: a, run: lint, produces: [/etc/passwd]}\n", "`produces` path '/etc/passwd' must"),
        ("stages:\n- {name: a, run: lint, consumes: ['reports/*.xml']}\n", "`consumes` path 'reports/*.xml'"),
        ("stages:\n- {name: a, run: lint, produces: x}\n", "stage a: `produces` must be a list of non-empty"),
        ("stages:\n- {name: a, run: lint, packages: ['Redis Server']}\n", "'Redis Server' is not a Debian"),
        (
            "stages:\n- {name: t, run: test, matrix: python, produces: [reports/]}\n"
            "- {name: b, run: lint, needs: [t], consumes: [reports/]}\n",
            "stage b consumes `reports/` from matrix stage t, whose products are one per Python",
        ),
    ],
)
def test_bad_products_fail_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pipeline.load(write(tmp_path, text), TASKS)
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(tmp_path / "pipeline.yaml"))
    assert "\n" not in str(exc.value)


def test_products_flow_through_needs_transitively(tmp_path: Path) -> None:
    pipe = pipeline.load(write(tmp_path, FLOW), TASKS)
    prod = pipe.by_name()["prod"]
    assert prod.consumes == ("reports/sbom/", "reports/security/record.json")
    # The most specific producer wins: security's reports/security/, not the tests' reports/.
    assert pipe.source("prod", "reports/security/record.json")[0].name == "security"
    assert pipe.source("prod", "reports/sbom/") == (pipe.by_name()["build"], "reports/sbom/")
    assert pipeline.job_needs(pipe, prod) == [("stage", False), ("build", True), ("security", True)]
    assert prod.environments() == ["staging", "production"]
    assert pipe.by_name()["build"].environments() == ["staging"]


def test_github_passes_artifacts_provisions_and_assumes_roles(tmp_path: Path) -> None:
    ci = dataclasses.replace(DEFAULT_CI, github_build_cache="type=gha")
    github, _ = renders(tmp_path, ci, text=FLOW)
    jobs = github["jobs"]
    tests = jobs["tests"]["steps"]
    assert {"name": "packages", "run": "sudo apt-get update -qq && sudo apt-get install -y -qq "
            "--no-install-recommends postgresql redis-server"} in tests  # fmt: skip
    upload = next(s for s in tests if s.get("uses") == "actions/upload-artifact@v4")
    assert upload["if"] == "always()"  # reports even when the tests fail
    assert upload["with"]["name"] == "tests-reports-${{ matrix.python }}"  # one per Python
    build = jobs["build"]
    uses = [s.get("uses") for s in build["steps"]]
    assert "docker/setup-buildx-action@v3" in uses
    assert "crazy-max/ghaction-github-runtime@v3" in uses  # type=gha needs the runtime token
    assert build["env"] == {
        "CONVEYOR_REGISTRY": "${{ vars.CONVEYOR_REGISTRY }}",  # staging's registry is not committed
        "CONVEYOR_IMAGE__CACHE_FROM": "type=gha",
        "CONVEYOR_IMAGE__CACHE_TO": "type=gha,mode=max",
    }
    assert build["permissions"] == {"contents": "read", "id-token": "write"}
    aws = next(s for s in build["steps"] if s.get("uses") == "aws-actions/configure-aws-credentials@v4")
    assert aws["with"] == {"role-to-assume": "${{ vars.AWS_ROLE_ARN }}", "aws-region": "eu-west-1"}
    # The credentials come before the task, the upload after it.
    assert uses.index("aws-actions/configure-aws-credentials@v4") < [
        s.get("run") for s in build["steps"]
    ].index("invoke build image.smoke image.push --env staging")
    prod = jobs["prod"]
    assert prod["needs"] == ["stage", "build", "security"]
    downloads = [s["with"] for s in prod["steps"] if s.get("uses") == "actions/download-artifact@v4"]
    assert downloads == [
        {"name": "build-reports-sbom", "path": "reports/sbom"},
        {"name": "security-reports-security", "path": "reports/security"},
    ]
    kube = next(s for s in prod["steps"] if s.get("name") == "cluster access (production)")
    assert kube["env"] == {"KUBECONFIG_DATA": "${{ secrets.KUBECONFIG }}"}
    assert '>> "$GITHUB_ENV"' in kube["run"]
    assert "env" not in prod  # two environments: no single CONVEYOR_REGISTRY to set
    assert "permissions" not in jobs["tests"]  # no cloud, no token


def test_gitlab_passes_artifacts_provisions_and_assumes_roles(tmp_path: Path) -> None:
    ci = dataclasses.replace(DEFAULT_CI, gitlab_build_cache="type=registry,ref=$CI_REGISTRY_IMAGE/cache")
    _, gitlab = renders(tmp_path, ci, text=FLOW)
    assert gitlab["tests"]["before_script"] == [
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql redis-server",
        DEFAULT_CI.install,
    ]
    build = gitlab["build"]
    assert build["image"] == "$CONVEYOR_CI__GITLAB_DOCKER_IMAGE"
    assert build["before_script"] == [DOCKER_TOOLS, DEFAULT_CI.install]
    assert build["variables"] == {
        "CONVEYOR_IMAGE__CACHE_FROM": "type=registry,ref=$CI_REGISTRY_IMAGE/cache",
        "CONVEYOR_IMAGE__CACHE_TO": "type=registry,ref=$CI_REGISTRY_IMAGE/cache,mode=max",
    }
    assert build["script"][0].startswith(
        'if [ -n "${CONVEYOR_IMAGE__CACHE_TO:-}" ]; then docker buildx create'
    )
    assert build["artifacts"] == {"paths": ["build/release.json", "reports/sbom/"]}
    assert build["needs"] == [{"job": "tests", "artifacts": False}, {"job": "security", "artifacts": False}]
    stage = gitlab["stage"]
    assert stage["needs"] == [{"job": "build", "artifacts": True}]
    assert stage["id_tokens"] == {"AWS_ID_TOKEN": {"aud": "sts.amazonaws.com"}}
    oidc = stage["script"][0]
    assert oidc.startswith('if [ -n "${AWS_ROLE_ARN:-}" ] && [ -n "${AWS_ID_TOKEN:-}" ]; then')
    assert "export AWS_WEB_IDENTITY_TOKEN_FILE" in oidc
    assert stage["script"][-1] == "invoke deploy --env staging"
    prod = gitlab["prod"]
    assert prod["before_script"][0].startswith("command -v kubectl >/dev/null || (apt-get")
    assert any(line.startswith('test -f "${KUBECONFIG:-}"') for line in prod["script"])
    assert prod["needs"] == [
        {"job": "stage", "artifacts": False},
        {"job": "build", "artifacts": True},
        {"job": "security", "artifacts": True},
    ]
    assert "id_tokens" not in gitlab["tests"]


def test_an_empty_build_cache_renders_no_cache(tmp_path: Path) -> None:
    github, gitlab = renders(tmp_path, DEFAULT_CI, text=FLOW)  # both caches ""
    assert "crazy-max/ghaction-github-runtime@v3" not in [
        s.get("uses") for s in github["jobs"]["build"]["steps"]
    ]
    assert "CONVEYOR_IMAGE__CACHE_FROM" not in github["jobs"]["build"]["env"]
    assert "variables" not in gitlab["build"]
    assert gitlab["build"]["script"][-1] == "invoke build image.smoke image.push --env staging"
    assert not any("buildx create" in line for line in gitlab["build"]["script"])


def test_environment_access_reads_the_committed_environment_files() -> None:
    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    envs = pipeline.environment_access(REPO, pipe)
    assert envs["staging"] == pipeline.EnvAccess("staging", "ecs", "eu-west-1", registry_committed=False)
    assert envs["production"] == pipeline.EnvAccess("production", "k8s", "", registry_committed=True)


def test_repo_test_jobs_get_the_fixture_servers() -> None:
    github, gitlab, _ = repo_renders()
    packages = next(s for s in github["jobs"]["tests"]["steps"] if s.get("name") == "packages")
    assert packages["run"].endswith("--no-install-recommends postgresql redis-server")
    assert gitlab["tests"]["before_script"][0].endswith("--no-install-recommends postgresql redis-server")


# --- isolated stages (real git, a tiny command in place of invoke) ----------------------------------------

FILES = """
import pathlib, sys
op, *paths = sys.argv[1:]
for p in paths:
    path = pathlib.Path(p.lstrip("!"))
    if op == "make":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"made {p}")
    elif path.exists() == p.startswith("!"):
        sys.exit(f"{p}: {'present' if path.exists() else 'absent'} in {pathlib.Path.cwd()}")
"""


def git_project(root: Path) -> str:
    import subprocess

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", str(root)]
    (root / "tracked.txt").write_text("committed\n")
    (root / ".gitignore").write_text("build/\n.env*\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return sha.stdout.strip()


def run_isolated(root: Path, text: str, only: tuple[str, ...] = ()) -> dict[str, pipeline.StageResult]:
    import yaml

    from conveyor.runner import Runner

    words = {w for raw in yaml.safe_load(text)["stages"] for w in raw["run"].split()}  # all "tasks"
    pipe = pipeline.load(write(root, text), words)
    stages = [s for s in pipe.stages if not only or s.name in only]
    spaces = pipeline.Workspaces(root, git_project_sha(root), pipe, Runner(echo=False))
    results = pipeline.run_local(
        stages, jobs=2, logs=root / "build/ci", command=[sys.executable, "-c", FILES], workspaces=spaces
    )
    return {r.name: r for r in results}


def git_project_sha(root: Path) -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


ISOLATED = """
stages:
  - {name: make, run: "make out/data.txt out/more/x.txt stray.txt", produces: [out/]}
  - {name: other, run: "make other.txt", produces: [other.txt]}
  - name: use
    run: >-
      check out/data.txt out/more/x.txt tracked.txt .env
      !stray.txt !other.txt !uncommitted.txt !pipeline.yaml
    needs: [make, other]
    consumes: [out/]
"""


def test_a_stage_sees_the_commit_and_what_it_consumes_only(tmp_path: Path) -> None:
    git_project(tmp_path)
    (tmp_path / "uncommitted.txt").write_text("not in HEAD\n")  # the dirty tree stays out
    (tmp_path / ".env").write_text("A=1\n")  # ignored, copied in: CI's variables
    results = run_isolated(tmp_path, ISOLATED)
    assert {n: r.status for n, r in results.items()} == {"make": "passed", "other": "passed", "use": "passed"}
    assert (tmp_path / "build/ci/products/make/out/data.txt").read_text() == "made out/data.txt"
    assert not (tmp_path / "build/ci/products/make/stray.txt").exists()  # undeclared: not collected
    assert (tmp_path / "build/ci/checkouts/use/out/more/x.txt").is_file()
    assert not (tmp_path / "out").exists()  # nothing lands in the working tree
    # A second run starts clean: the consumer's checkout no longer holds what it got last time ...
    (tmp_path / "build/ci/checkouts/use/leftover.txt").write_text("x")
    again = run_isolated(tmp_path, ISOLATED.replace("!stray.txt", "!stray.txt !leftover.txt"), ("use",))
    assert again["use"].status == "passed", again["use"].log.read_text()  # type: ignore[union-attr]


def test_the_negative_check_fails_when_an_undeclared_path_is_visible(tmp_path: Path) -> None:
    git_project(tmp_path)
    (tmp_path / ".env").write_text("A=1\n")
    text = ISOLATED.replace("!stray.txt", "stray.txt")  # expects the undeclared file: must fail
    results = run_isolated(tmp_path, text)
    assert results["use"].status == "failed"
    assert "stray.txt: absent" in results["use"].log.read_text()  # type: ignore[union-attr]


def test_a_declared_product_that_is_not_made_fails_the_stage(tmp_path: Path) -> None:
    git_project(tmp_path)
    text = """
stages:
  - {name: make, run: "make out/a.txt", produces: [out/a.txt, out/b.txt]}
  - {name: use, run: "check out/a.txt", needs: [make], consumes: [out/a.txt]}
"""
    results = run_isolated(tmp_path, text)
    assert (results["make"].status, results["make"].reason) == (
        "failed",
        "declared product out/b.txt was not produced",
    )
    assert results["use"].status == "skipped"
    assert not (tmp_path / "build/ci/products/make").exists()
    assert "declared product out/b.txt" in "\n".join(pipeline.summary(list(results.values()), tmp_path))


def test_a_consumer_run_alone_without_its_product_fails_naming_it(tmp_path: Path) -> None:
    git_project(tmp_path)
    text = """
stages:
  - {name: make, run: "make out/a.txt", produces: [out/a.txt]}
  - {name: use, run: "check out/a.txt", needs: [make], consumes: [out/a.txt]}
"""
    results = run_isolated(tmp_path, text, only=("use",))
    assert results["use"].status == "failed"
    assert (
        results["use"].reason
        == "consumes out/a.txt, but make has not produced it in this checkout's runs (run make too)"
    )
    assert run_isolated(tmp_path, text)["use"].status == "passed"
    assert run_isolated(tmp_path, text, only=("use",))["use"].status == "passed"  # from the last run of make


# --- the build receives the CI cache ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_from", "cache_to", "expected"),
    [
        ("type=gha", "type=gha,mode=max", ["--cache-from", "type=gha", "--cache-to", "type=gha,mode=max"]),
        (
            "type=registry,ref=reg.example.com/app/cache",
            "",
            ["--cache-from", "type=registry,ref=reg.example.com/app/cache"],
        ),
        (  # a plain directory stays a local cache, as `invoke build --cache-from DIR` always did
            "/tmp/bk",
            "/tmp/bk2",
            ["--cache-from", "type=local,src=/tmp/bk", "--cache-to", "type=local,dest=/tmp/bk2,mode=max"],
        ),
    ],
)
def test_build_cache_specs_reach_buildx(cache_from: str, cache_to: str, expected: list[str]) -> None:
    from conveyor import images

    options = images.BuildOptions("runtime", cache_from=cache_from, cache_to=cache_to)

    def argv(use_buildx: bool) -> list[str]:
        return images.build_argv(
            use_buildx=use_buildx,
            dockerfile="Dockerfile",
            context=".",
            tags=["app:1"],
            options=options,
            build_args={},
            secrets=[],
            iidfile="iid",
        )

    buildx = argv(True)
    cache = [a for i, a in enumerate(buildx) if "--cache" in (a[:7], buildx[i - 1][:7])]
    assert cache == expected
    plain = argv(False)
    assert not [a for a in plain if a.startswith("--cache")]  # the classic builder has no cache export


def test_build_reads_the_cache_from_the_ci_variables(project: Project) -> None:
    import shutil

    if shutil.which("docker") is None:
        pytest.skip("no docker CLI to ask for buildx")  # --dry only asks `docker buildx version`
    project.write("Dockerfile", "FROM scratch\n")
    project.write("invoke.yaml", "conveyor:\n  project:\n    name: demo\n  image:\n    name: demo-app\n"
                  "    dockerfile: Dockerfile\n    target: runtime\n")  # fmt: skip
    git_project(project.root)
    env = {"CONVEYOR_IMAGE__CACHE_FROM": "type=gha", "CONVEYOR_IMAGE__CACHE_TO": "type=gha,mode=max"}
    result = project.invoke("--dry", "build", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "docker buildx build" in x or "docker build " in x)
    if "buildx" in line:
        assert "--cache-from type=gha --cache-to type=gha,mode=max" in line
    flagged = project.invoke("--dry", "build", "--cache-from", "/tmp/bk", env=env)  # a flag wins
    line = next(x for x in flagged.stdout.splitlines() if "docker buildx build" in x or "docker build " in x)
    assert "type=gha" not in line


def test_every_gitlab_variable_is_a_setting_conveyor_accepts() -> None:
    """The jobs export the file's variables (and a runner may set the dind switch): each must be a valid
    config variable, or every `invoke` in the job would stop at "unknown setting"."""
    _, gitlab, _ = repo_renders()
    names = set(gitlab["variables"]) | {pipeline.DIND_SWITCH}
    for job in gitlab.values():
        if isinstance(job, dict):
            names |= set(job.get("variables", {}))
    conveyor_vars = {n: gitlab["variables"].get(n, "none") for n in names if n.startswith("CONVEYOR_")}
    assert set(conveyor_vars) >= {pipeline.IMAGE_VAR, pipeline.PYTHON_IMAGE_VAR, pipeline.DOCKER_IMAGE_VAR}
    conveyor_vars |= {k: v for k, v in gitlab["build"]["variables"].items()}
    cfg = config.load(REPO, None, environ=conveyor_vars)
    assert cfg.ci.docker_service == "none"  # the run-time switch is the render-time key
    assert cfg.values["image.cache_to"].value.endswith(",mode=max")


@pytest.mark.parametrize(
    ("docker_host", "expected"),
    [
        ("tcp://docker:2375", "docker"),  # GitLab's docker:dind service
        ("tcp://10.0.0.5:2376", "10.0.0.5"),
        ("unix:///var/run/docker.sock", "127.0.0.1"),
        ("", "127.0.0.1"),
    ],
)
def test_the_smoke_probe_goes_where_the_engine_publishes(docker_host: str, expected: str) -> None:
    from conveyor import images

    assert images.engine_host({"DOCKER_HOST": docker_host} if docker_host else {}) == expected


def test_conveyor_init_writes_the_same_pipeline_shape_and_its_ci_files_check(tmp_path: Path) -> None:
    import io
    import subprocess

    import yaml

    from conveyor import cli
    from tests.unit.test_init import flask_project

    flask_project(tmp_path)
    assert cli.main(["init", str(tmp_path)], out=io.StringIO(), err=io.StringIO()) == 0
    stages = {s["name"]: s for s in yaml.safe_load((tmp_path / "ci/pipeline.yaml").read_text())["stages"]}
    assert stages["build"]["run"] == "build image.smoke image.push --env staging"
    assert stages["build"]["produces"] == ["build/release.json", "reports/sbom/"]
    assert stages["deploy-staging"]["consumes"] == ["build/release.json"]
    assert stages["deploy-production"]["run"] == "promote --from staging --to production"
    gitlab = yaml.safe_load((tmp_path / ".gitlab-ci.yml").read_text())
    assert gitlab["deploy-staging"]["needs"] == [{"job": "build", "artifacts": True}]
    assert (tmp_path / pipeline.GITLAB_DIND_FILE).is_file()
    check = subprocess.run(
        [sys.executable, "-m", "invoke", "ci.check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("ok -- validation done") == 3
