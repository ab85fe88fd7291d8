"""`invoke build`, image.smoke and image.push on a real Docker engine with the real app image."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.integration.conftest import copy_project

pytestmark = pytest.mark.docker


def release(project: Project) -> dict:
    return json.loads((project.root / "build/release.json").read_text())


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=300)


def test_build_tags_by_git_sha_and_branch(built_project: Project) -> None:
    rel = release(built_project)
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=built_project.root, capture_output=True, text=True
    ).stdout
    assert rel["refs"] == [f"conveyor-demo:{sha.strip()[:12]}", "conveyor-demo:main"]
    assert rel["dirty"] is False
    labels = json.loads(
        docker("image", "inspect", "--format", "{{json .Config.Labels}}", rel["image_id"]).stdout
    )
    assert labels["org.opencontainers.image.revision"] == sha.strip()
    assert {"org.opencontainers.image.created", "org.opencontainers.image.version"} <= set(labels)


def test_build_writes_an_sbom_of_the_images_own_venv(built_project: Project) -> None:
    rel = release(built_project)
    path = built_project.root / "reports/sbom" / (rel["image_id"].replace(":", "-") + ".cdx.json")
    sbom = json.loads(path.read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["version"] == rel["image_id"]
    versions = {c["name"].lower(): c["version"] for c in sbom["components"]}
    lock = dict(
        line.strip().lower().split("==")
        for line in (built_project.root / "app/requirements.lock").read_text().splitlines()
        if "==" in line
    )
    assert versions["fastapi"] == lock["fastapi"]
    assert versions["uvicorn"] == lock["uvicorn"]
    assert "pytest" not in versions  # test tools are not in the runtime image


def test_smoke_passes_and_leaves_no_container(built_project: Project) -> None:
    before = set(docker("ps", "-aq").stdout.split())
    result = built_project.invoke("image.smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke ok" in result.stdout
    assert set(docker("ps", "-aq").stdout.split()) == before


def test_runtime_runs_as_non_root_without_compiler_or_tests(built_project: Project) -> None:
    image = release(built_project)["image_id"]
    probe = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "id -u; for t in gcc cc make; do command -v $t || true; done;"
        " ls /srv/app/app; ls -d /srv/app/app/tests 2>&1",
    )
    lines = probe.stdout.split()
    assert lines[0] == "10001"
    assert not any(tool in probe.stdout for tool in ("/gcc", "/cc", "/make"))
    assert "main.py" in lines
    assert "No such file" in probe.stdout + probe.stderr


def test_test_stage_runs_the_suite_inside_the_image(built_project: Project) -> None:
    result = built_project.invoke("build", "--target", "test", "--no-cache")  # a cached RUN proves nothing
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert " passed" in result.stdout


def test_dirty_tree_is_tagged_dirty_and_says_so(base_image: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path, base_image)
    project.write("app/extra.py", "VALUE = 1\n")
    result = project.invoke("build")
    assert result.returncode == 0, result.stderr
    assert release(project)["refs"][0].endswith("-dirty")
    assert "uncommitted changes" in result.stdout


def test_ca_bundle_secret_is_in_no_layer_history_or_output(base_image: str, tmp_path: Path) -> None:
    sentinel = f"conveyor-ca-sentinel-{uuid.uuid4().hex}"
    bundle = tmp_path / "ca.pem"
    host_bundle = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
    bundle.write_text((host_bundle.read_text() if host_bundle.is_file() else "") + f"\n# {sentinel}\n")
    project = copy_project(tmp_path / "p", base_image)
    env = {"SSL_CERT_FILE": str(bundle), "PIP_CERT": str(bundle), "REQUESTS_CA_BUNDLE": str(bundle)}
    result = project.invoke("build", "--no-cache", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "--secret id=ca,src=" in result.stdout  # the bundle was offered to the build, by path
    assert sentinel not in result.stdout + result.stderr
    image = release(project)["image_id"]
    assert sentinel not in docker("history", "--no-trunc", image).stdout
    archive = tmp_path / "image.tar"
    assert docker("save", "-o", str(archive), image).returncode == 0
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            assert sentinel.encode() not in data, member.name
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for entry in layer.getmembers():
                        if entry.isfile():
                            content = layer.extractfile(entry).read()  # type: ignore[union-attr]
                            assert sentinel.encode() not in content, f"{member.name}:{entry.name}"


def test_push_to_a_real_registry_and_pull_by_digest(built_project: Project, registry: str) -> None:
    built_project.write(
        "deploy/environments/regtest.yaml",
        f"target: compose\ncompose: {{files: [x]}}\nregistry: {registry}\n",
    )
    result = built_project.invoke("image.push", "--env", "regtest")
    assert result.returncode == 0, result.stdout + result.stderr
    pinned = release(built_project)["pushed"]["regtest"]
    assert pinned.startswith(f"{registry}/conveyor-demo@sha256:")
    assert pinned in result.stdout
    docker("rmi", "-f", pinned.split("@")[0] + ":" + release(built_project)["refs"][0].split(":")[1])
    pulled = docker("pull", pinned)
    assert pulled.returncode == 0, pulled.stderr
    digest = pinned.split("@")[1]
    assert (built_project.root / "reports/sbom" / (digest.replace(":", "-") + ".cdx.json")).is_file()


def test_size_budget_fails_with_both_numbers(built_project: Project) -> None:
    result = built_project.invoke("build", env={"CONVEYOR_IMAGE__MAX_SIZE_MB": "10"})
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()
    assert len(line) == 1
    assert "MB, over the budget image.max_size_mb=10 (env CONVEYOR_IMAGE__MAX_SIZE_MB)" in line[0]


def test_broken_dockerfile_is_one_clear_line(base_image: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path, base_image)
    dockerfile = project.root / "app/Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace("RUN python3 -m venv /opt/venv", "RUN false-command-xyz")
    )
    result = project.invoke("build")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("conveyor: build of app/Dockerfile (target runtime) failed:")
    assert "Traceback" not in result.stderr


def test_dry_build_runs_nothing(built_project: Project) -> None:
    before = set(docker("images", "-qa").stdout.split())
    result = built_project.invoke("--dry", "build")
    assert result.returncode == 0, result.stderr
    assert "[dry] docker buildx build" in result.stdout
    assert set(docker("images", "-qa").stdout.split()) == before
