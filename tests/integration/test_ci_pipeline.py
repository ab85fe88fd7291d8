"""`invoke ci` on a tiny throwaway project with its own tasks and ci/pipeline.yaml: each stage in a clean
checkout of HEAD, products carried only as declared, a summary table; `ci.render` / `ci.check` on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project

pytestmark = pytest.mark.pipeline

TASKS = '''
"""A tiny project: conveyor's menu plus tasks that make, check and wait, to drive `invoke ci`."""

import json
import subprocess
import time
from pathlib import Path

from invoke import task

from conveyor.tasks import namespace


@task
def release(c, extra=""):
    """Write build/release.json with HEAD's sha (and an undeclared file beside it)."""
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path("build").mkdir(exist_ok=True)
    Path("build/release.json").write_text(json.dumps({"git_sha": sha, "cwd": str(Path.cwd())}))
    Path("build/scratch.txt").write_text("not declared")
    Path("notes.txt").write_text("not declared either")
    if extra:
        Path(extra).write_text("asked for")


@task
def ship(c):
    """Need the release record; must not see anything else the build made."""
    record = json.loads(Path("build/release.json").read_text())
    stray = [p for p in ("build/scratch.txt", "notes.txt", "uncommitted.txt") if Path(p).exists()]
    if stray:
        raise SystemExit(f"ship sees undeclared paths: {stray}")
    Path("shipped.json").write_text(json.dumps({**record, "shipper": str(Path.cwd())}))
    print(f"shipping {record['git_sha']}")


@task
def nap(c, seconds=0.0, fail=False):
    """Sleep, then pass or fail."""
    time.sleep(float(seconds))
    if fail:
        raise SystemExit("nap failed as asked")


ns = namespace()
for t in (release, ship, nap):
    ns.add_task(t)
'''

PIPELINE = """
stages:
  - {name: one, run: nap --seconds 1.5}
  - {name: two, run: nap --seconds 1.5}
  - {name: build, run: release, needs: [one, two], produces: [build/release.json]}
  - name: ship
    run: ship
    needs: [build]
    consumes: [build/release.json]
    produces: [shipped.json]
"""


def git(root: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=conveyor-tests", "-c", "user.email=tests@conveyor.invalid", *args]
    return subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def table(stdout: str) -> dict[str, dict[str, str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = {}
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) >= 5:
            rows[parts[0]] = {
                "status": parts[1],
                "start": parts[3].rstrip("s"),
                "end": parts[4].rstrip("s"),
                "rest": " ".join(parts[5:]),
            }
    return rows


@pytest.fixture
def tiny(project: Project) -> Project:
    """tests.conftest's minimal project with the tasks and pipeline above, committed on branch main."""
    project.write("tasks.py", TASKS)
    project.write("ci/pipeline.yaml", PIPELINE)
    project.write(
        "pyproject.toml",
        '[project]\nname = "tiny"\nclassifiers = ["Programming Language :: Python :: 3.12"]\n',
    )
    project.write(".gitignore", "build/\n.env*\n__pycache__/\n")
    project.write(".env", "TINY=1\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "tiny")
    return project


def test_stages_run_isolated_and_receive_only_what_they_consume(tiny: Project) -> None:
    (tiny.root / "uncommitted.txt").write_text("only in the working tree\n")
    result = tiny.invoke("ci", "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(
        ("one", "two", "build", "ship"), "passed"
    )
    # Independent stages overlap; the build waited for both.
    assert float(rows["one"]["start"]) < float(rows["two"]["end"])
    assert float(rows["two"]["start"]) < float(rows["one"]["end"])
    assert float(rows["build"]["start"]) >= max(float(rows["one"]["end"]), float(rows["two"]["end"]))
    # The dirty tree is said loudly and stays out of every stage.
    assert "WARNING: 1 uncommitted change(s) are NOT in this run" in result.stdout + result.stderr
    head = git(tiny.root, "rev-parse", "HEAD")
    shipped = json.loads((tiny.root / "build/ci/products/ship/shipped.json").read_text())
    assert shipped["git_sha"] == head  # the record the build stage made, carried to the ship stage
    assert shipped["cwd"] == str(tiny.root / "build/ci/checkouts/build")  # made in the build's own checkout
    assert shipped["shipper"] == str(tiny.root / "build/ci/checkouts/ship")  # used in another one
    assert not (tiny.root / "build/ci/products/build/build/scratch.txt").exists()  # undeclared: not kept
    assert not (tiny.root / "build/release.json").exists()  # nothing written into the working tree
    assert f"shipping {head}" in (tiny.root / "build/ci/ship.log").read_text()


def test_an_undeclared_input_is_not_there(tiny: Project) -> None:
    # The build also writes notes.txt; the ship stage checks it cannot see it. Declaring it as a product
    # but not as an input must change nothing; declaring it as an input must make ship fail.
    text = PIPELINE.replace("produces: [build/release.json]", "produces: [build/release.json, notes.txt]")
    tiny.write("ci/pipeline.yaml", text)
    git(tiny.root, "commit", "-qam", "notes is a product")
    assert tiny.invoke("ci").returncode == 0
    tiny.write(
        "ci/pipeline.yaml",
        text.replace("consumes: [build/release.json]", "consumes: [build/release.json, notes.txt]"),
    )
    git(tiny.root, "commit", "-qam", "ship consumes notes")
    result = tiny.invoke("ci", "--skip", "one,two")
    assert result.returncode == 1
    assert table(result.stdout)["ship"]["status"] == "failed"
    assert "ship sees undeclared paths: ['notes.txt']" in (tiny.root / "build/ci/ship.log").read_text()


def test_a_missing_product_fails_its_stage_and_skips_the_rest(tiny: Project) -> None:
    tiny.write(
        "ci/pipeline.yaml",
        PIPELINE.replace("produces: [build/release.json]", "produces: [build/release.json, build/sbom/]"),
    )
    git(tiny.root, "commit", "-qam", "a product nobody makes")
    result = tiny.invoke("ci", "--skip", "one,two")
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["build"]["status"] == "failed"
    assert "(declared product build/sbom/ was not produced)" in rows["build"]["rest"]
    assert rows["ship"]["status"] == "skipped"
    assert result.stderr.strip() == "conveyor: pipeline failed: build (logs in build/ci/)"


def test_a_failing_stage_skips_its_dependents(tiny: Project) -> None:
    tiny.write(
        "ci/pipeline.yaml",
        PIPELINE.replace("nap --seconds 1.5}\n  - {name: two", "nap --fail}\n  - {name: two", 1),
    )
    git(tiny.root, "commit", "-qam", "one fails")
    result = tiny.invoke("ci")
    assert result.returncode == 1
    rows = table(result.stdout)
    assert (rows["one"]["status"], rows["two"]["status"]) == ("failed", "passed")
    assert (rows["build"]["status"], rows["ship"]["status"]) == ("skipped", "skipped")
    assert "nap failed as asked" in (tiny.root / "build/ci/one.log").read_text()


def test_in_place_runs_the_working_tree(tiny: Project) -> None:
    result = tiny.invoke("ci", "--in-place", "--only", "build")
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tiny.root / "build/release.json").read_text())
    assert record["cwd"] == str(tiny.root)
    assert not (tiny.root / "build/ci/checkouts").exists()


def test_a_consumed_path_nobody_produces_is_a_config_error_before_anything_runs(tiny: Project) -> None:
    tiny.write(
        "ci/pipeline.yaml", PIPELINE.replace("consumes: [build/release.json]", "consumes: [build/other.json]")
    )
    git(tiny.root, "commit", "-qam", "bad consumes")
    result = tiny.invoke("ci")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"conveyor: {tiny.root}/ci/pipeline.yaml: stage ship consumes `build/other.json`, which no stage "
        "in its needs produces (add the producing stage to `needs` or `produces` to it)"
    )
    assert not (tiny.root / "build").exists()  # no checkout, no log: nothing happened


def test_hand_edited_ci_file_fails_check_with_a_diff(tiny: Project) -> None:
    assert tiny.invoke("ci.render").returncode == 0
    path = tiny.root / ".github/workflows/ci.yml"
    saved = path.read_text()
    path.write_text(saved.replace("run: invoke ship", "run: invoke ship && echo sneaky"))
    result = tiny.invoke("ci.check")
    assert result.returncode == 1
    assert "-    - run: invoke ship && echo sneaky" in result.stdout
    assert "+    - run: invoke ship" in result.stdout
    assert result.stderr.strip().startswith("conveyor: .github/workflows/ci.yml differ from ci/pipeline.yaml")
    path.write_text(saved)
    result = tiny.invoke("ci.check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok -- validation done") == 2  # no docker stage: no dind file


def test_deploy_uses_the_recorded_digest_without_the_local_image(tmp_path: Path) -> None:
    """The CI deploy job has the build job's record but not its image: a digest recorded for the
    environment's registry goes straight to the target; without one, deploy pushes (and needs the image)."""
    import os
    import shutil

    from tests.conftest import REPO, engine_missing

    if shutil.which("docker") is None:
        engine_missing("docker CLI not installed")
    for rel in ("invoke.yaml", "tasks.py", "pyproject.toml", "deploy"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, tmp_path / rel)
        else:
            shutil.copy2(src, tmp_path / rel)
    git(tmp_path, "init", "-q")
    record = {
        "refs": ["conveyor-demo:abc"],
        "image_id": "sha256:" + "9" * 64,  # in no engine
        "git_sha": "a" * 40,
        "dirty": False,
        "target": "runtime",
        "pushed": {"staging": "127.0.0.1:9/conveyor-demo@sha256:" + "2" * 64},
    }
    (tmp_path / "build").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "AWS_"))}
    env |= {
        "CONVEYOR_REGISTRY": "127.0.0.1:9",
        "CONVEYOR_ECS__ENDPOINT_URL": "http://127.0.0.1:9",  # closed: the first AWS call fails
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "HOME": str(tmp_path),
    }

    def deploy() -> subprocess.CompletedProcess[str]:
        (tmp_path / "build/release.json").write_text(json.dumps(record))
        return subprocess.run(
            [sys.executable, "-m", "invoke", "deploy", "--env", "staging"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    recorded = deploy()
    assert recorded.returncode == 1
    assert "==> push" not in recorded.stdout  # straight to the target: its lock is the first AWS call
    assert recorded.stderr.strip().startswith("conveyor: put_parameter: EndpointConnectionError")
    record["pushed"] = {
        "staging": "elsewhere.example.com/conveyor-demo@sha256:" + "2" * 64
    }  # another registry
    pushed = deploy()
    assert pushed.returncode == 1
    assert "==> push 127.0.0.1:9/conveyor-demo:abc" in pushed.stdout
    assert "no such image" in pushed.stderr.lower()


def test_without_a_commit_isolated_mode_refuses_and_in_place_runs(project: Project) -> None:
    project.write("tasks.py", TASKS)
    project.write("ci/pipeline.yaml", PIPELINE)
    result = project.invoke("ci")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"conveyor: {project.root}: no commit to check out; `invoke ci` runs each stage in a clean checkout "
        "of HEAD (commit first, or use --in-place)"
    )
    assert not (project.root / "build").exists()
    assert project.invoke("ci", "--in-place", "--only", "one").returncode == 0


def test_an_uncommitted_pipeline_is_named(tiny: Project) -> None:
    tiny.write("ci/pipeline.yaml", PIPELINE.replace("nap --seconds 1.5", "nap", 2))
    result = tiny.invoke("ci", "--only", "one,two")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING: the stages are those of the uncommitted ci/pipeline.yaml (CI reads HEAD's)" in (
        result.stdout + result.stderr
    )
