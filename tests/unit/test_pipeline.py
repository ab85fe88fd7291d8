"""The pipeline definition: validation, local scheduling and the generated CI files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor import pipeline
from conveyor.doctor import python_versions
from conveyor.errors import ConfigError
from conveyor.tasks import task_names
from tests.conftest import REPO

TASKS = {"lint", "typecheck", "test", "build", "image.smoke", "deploy", "ci"}


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


def test_committed_ci_files_are_the_golden_renders() -> None:
    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    pythons = python_versions(REPO / "pyproject.toml")
    assert (REPO / pipeline.GITHUB_FILE).read_text() == pipeline.render_github(pipe, pythons)
    assert (REPO / pipeline.GITLAB_FILE).read_text() == pipeline.render_gitlab(pipe, pythons)


def test_renders_are_thin_and_shaped_as_asked() -> None:
    import yaml

    pipe = pipeline.load(REPO / pipeline.PIPELINE_FILE, task_names())
    pythons = python_versions(REPO / "pyproject.toml")
    github = yaml.safe_load(pipeline.render_github(pipe, pythons))
    gitlab = yaml.safe_load(pipeline.render_gitlab(pipe, pythons))
    for job in github["jobs"].values():
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert runs[0] == pipeline.INSTALL
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
