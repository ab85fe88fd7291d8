"""What `invoke security` scans: the project's own code, lock files, Dockerfiles and deployed overlays.

Pure discovery (no scanner runs): a scanner given nothing to examine is ERROR naming the key to set.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conveyor import security
from tests.conftest import Project

ENV = {"PATH": "/usr/bin:/bin"}  # no CONVEYOR_* leaks into the config under test


def touch(root: Path, *paths: str) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n" if rel.endswith(".py") else "")


# --- Dockerfiles and lock files -------------------------------------------------------------------


def test_dockerfiles_are_found_by_name_at_any_depth() -> None:
    files = [
        "Dockerfile",
        "app/Dockerfile",
        "images/a/b/worker.Dockerfile",
        "docker/Dockerfile.prod",
        "dockerfile",
        "app/Dockerfile.dockerignore",  # BuildKit's per-Dockerfile ignore list
        "docs/Dockerfile.md",
        "templates/Dockerfile.tmpl",  # a generator's input, not a Dockerfile
        "src/dockerfiles.py",
        "README.md",
    ]
    assert security.find_dockerfiles(files) == (
        "Dockerfile",
        "app/Dockerfile",
        "docker/Dockerfile.prod",
        "dockerfile",
        "images/a/b/worker.Dockerfile",
    )


def test_lock_files_are_requirements_files_at_the_root_or_one_level_down() -> None:
    files = [
        "requirements.txt",
        "requirements-dev.lock",
        "app/requirements.lock",
        "requirements/prod.txt",
        "a/b/requirements.txt",  # two levels down
        "constraints.txt",
        "app/requirements.in",
    ]
    assert security.find_lock_files(files) == (
        "app/requirements.lock",
        "requirements-dev.lock",
        "requirements.txt",
        "requirements/prod.txt",
    )


def test_project_files_of_a_git_repository_are_its_tracked_and_unignored_files(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    touch(tmp_path, "Dockerfile", "ops/build/Dockerfile", "gen/Dockerfile", "svc/Dockerfile",
          "node_modules/x/Dockerfile", "deleted/Dockerfile", ".gitignore")  # fmt: skip
    (tmp_path / ".gitignore").write_text("gen/\n")
    tracked = ["Dockerfile", "ops/build/Dockerfile", "deleted/Dockerfile", ".gitignore"]
    subprocess.run(["git", "add", *tracked], cwd=tmp_path, check=True)
    (tmp_path / "deleted/Dockerfile").unlink()
    files = security.project_files(tmp_path)
    # tracked files wherever they are; new ones unless ignored or in a dependency/build folder
    assert security.find_dockerfiles(files) == ("Dockerfile", "ops/build/Dockerfile", "svc/Dockerfile")


def test_project_files_outside_git_skip_virtualenvs_and_build_output(tmp_path: Path) -> None:
    touch(tmp_path, "Dockerfile", "build/Dockerfile", ".venv/lib/Dockerfile", "node_modules/x/Dockerfile",
          ".nox/s/Dockerfile", "svc/web.Dockerfile")  # fmt: skip
    files = security.project_files(tmp_path)
    assert security.find_dockerfiles(files) == ("Dockerfile", "svc/web.Dockerfile")


# --- the code bandit scans ------------------------------------------------------------------------


def test_setuptools_find_where_names_the_packages(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools.packages.find]\nwhere = ["src"]\n')
    touch(tmp_path, "src/shop/__init__.py", "src/shop/api/__init__.py", "src/tests/__init__.py",
          "src/notes.txt", "tasks.py", "tests/test_shop.py")  # fmt: skip
    assert security.default_code(tmp_path) == ("src/shop",)


def test_setuptools_find_honours_include_and_exclude(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.packages.find]\ninclude = ["shop*"]\nexclude = ["shop_legacy"]\n'
    )
    touch(tmp_path, "shop/__init__.py", "shop_legacy/__init__.py", "tools/__init__.py")
    assert security.declared_packages(tmp_path) == ("shop",)


def test_setuptools_packages_list_with_package_dir_and_py_modules(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.setuptools]\n"
        'packages = ["shop", "shop.api", "extra"]\n'
        'py-modules = ["cli"]\n'
        '[tool.setuptools.package-dir]\n"" = "lib"\nextra = "vendor/extra"\n'
    )
    assert security.declared_packages(tmp_path) == ("lib/shop", "vendor/extra", "lib/cli.py")


def test_without_a_declaration_packages_and_top_level_modules_are_found(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "blog"\n[tool.hatch.version]\npath = "x"\n')
    touch(tmp_path, "manage.py", "blog/__init__.py", "src/core/__init__.py", "src/README.md", "static/x.css",
          "tests/__init__.py", "docs/conf.py", ".venv/lib/site.py", "conftest.py", "test_smoke.py",
          "notes/readme.txt")  # fmt: skip
    (tmp_path / "notes" / "__pycache__").mkdir()
    assert security.default_code(tmp_path) == ("blog", "manage.py", "src/core")


def test_a_single_module_flask_project_is_still_scanned(tmp_path: Path) -> None:
    touch(tmp_path, "app.py", "requirements.txt", "templates/index.html")
    assert security.default_code(tmp_path) == ("app.py",)


def test_configured_paths_that_are_missing_or_outside_the_project_are_named(tmp_path: Path) -> None:
    touch(tmp_path, "src/a.py")
    problems = security.check_paths(
        tmp_path, ["src", "nope", "../elsewhere"], "security.paths", "invoke.yaml:3"
    )
    assert problems == [
        "security.paths (invoke.yaml:3): `nope` does not exist",
        "security.paths (invoke.yaml:3): `../elsewhere` is outside the project",
    ]


# --- targets from configuration -------------------------------------------------------------------


def k8s_env(project: Project, name: str, overlay: str, image: str | None = None) -> None:
    text = f"target: k8s\nurl: https://{name}.example.com\nk8s:\n  overlay: {overlay}\n  namespace: {name}\n"
    project.write(f"deploy/environments/{name}.yaml", text + (f"  image: {image}\n" if image else ""))


def test_configured_targets_win_and_a_missing_one_is_a_problem_naming_its_key(project: Project) -> None:
    project.write(
        "invoke.yaml",
        """
        conveyor:
          security:
            paths: [svc, nope]
            lock_files: [svc/requirements.lock]
        """,
    )
    touch(project.root, "svc/__init__.py", "svc/requirements.lock", "requirements.txt")
    targets = security.resolve_targets(project.root, ENV)
    assert targets.code == ("svc", "nope")
    assert targets.lock_files == ("svc/requirements.lock",)
    assert targets.problems == {"bandit": ("security.paths (invoke.yaml:3): `nope` does not exist",)}


def test_default_targets_come_from_the_tree(project: Project) -> None:
    touch(project.root, "web/__init__.py", "web/Dockerfile", "requirements.txt", "tests/test_web.py")
    targets = security.resolve_targets(project.root, ENV)
    assert targets.code == ("tasks.py", "web")
    assert targets.lock_files == ("requirements.txt",)
    assert targets.dockerfiles == ("web/Dockerfile",)
    assert targets.overlays == ()
    assert targets.problems == {}


def test_image_dockerfile_is_linted_whatever_its_name(project: Project) -> None:
    project.write("invoke.yaml", "conveyor:\n  image:\n    dockerfile: docker/app.containerfile\n")
    touch(project.root, "docker/app.containerfile")
    assert security.resolve_targets(project.root, ENV).dockerfiles == ("docker/app.containerfile",)


def test_overlays_are_those_k8s_environments_deploy_with_their_placeholder(project: Project) -> None:
    project.write("invoke.yaml", "conveyor:\n  image:\n    name: shop\n")
    touch(
        project.root, "k8s/prod/kustomization.yaml", "k8s/qa/kustomization.yaml", "k8s/no/kustomization.yaml"
    )
    k8s_env(project, "production", "k8s/prod")
    k8s_env(project, "qa", "k8s/qa", image="ghcr.io/acme/shop-web")
    targets = security.resolve_targets(project.root, ENV)
    assert targets.overlays == (
        security.Overlay("production", "k8s/prod", "shop"),  # k8s.image defaults to image.name
        security.Overlay("qa", "k8s/qa", "ghcr.io/acme/shop-web"),
    )
    assert targets.problems == {}


def test_an_environment_that_does_not_load_is_a_checkov_problem_naming_it(project: Project) -> None:
    project.write("deploy/environments/staging.yaml", "target: k8s\nk8s:\n  overlay: k8s/staging\n")
    k8s_env(project, "production", "k8s/missing")
    problems = security.resolve_targets(project.root, ENV).problems["checkov"]
    assert problems[0] == "environment `production`: k8s.overlay `k8s/missing` has no kustomization.yaml"
    assert problems[1].startswith("environment `staging` does not load: ")
    assert "k8s.namespace" in problems[1]


def test_a_broken_configuration_stops_the_scanners_that_read_it(project: Project) -> None:
    project.write("invoke.yaml", "conveyor:\n  security:\n    pathz: [src]\n")
    problems = security.resolve_targets(project.root, ENV).problems
    assert set(problems) == {"bandit", "pip-audit", "checkov"}  # hadolint needs no configuration
    assert "unknown key `security.pathz`" in problems["bandit"][0]
    assert problems["checkov"][0].startswith("environment `local` does not load: ")


def test_the_wrapper_kustomization_pins_the_configured_placeholder_by_a_relative_path() -> None:
    overlay = security.Overlay("production", "deploy/k8s/prod", "shop-web")
    text = security.wrapper_kustomization(overlay, "reports/security/k8s-production")
    data = yaml.safe_load(text)
    assert data["resources"] == ["../../../deploy/k8s/prod"]
    assert data["images"] == [
        {"name": "shop-web", "newName": "registry.invalid/shop-web", "digest": security.DIGEST}
    ]
    assert "conveyor-demo" not in text


@pytest.mark.parametrize(
    "placeholder",
    [
        "localhost:5000/acme/shop:dev",
        "localhost:5000/acme/shop@sha256:" + "1" * 64,
        "localhost:5000/acme/shop",
    ],
)
def test_the_placeholder_is_matched_by_its_name_without_tag_or_digest(placeholder: str) -> None:
    text = security.wrapper_kustomization(
        security.Overlay("qa", "k8s/qa", placeholder), "reports/security/k8s-qa"
    )
    (image,) = yaml.safe_load(text)["images"]
    assert (image["name"], image["newName"]) == ("localhost:5000/acme/shop", "registry.invalid/shop")


def test_the_kit_policy_is_used_when_the_project_has_none(tmp_path: Path) -> None:
    with security.checkov_policy(tmp_path) as policy:
        skips = yaml.safe_load(policy.read_text())["skip-check"]
    assert skips == ["CKV_DOCKER_7", "CKV_K8S_15", "CKV_K8S_35"]
    (tmp_path / ".checkov.yaml").write_text("skip-check: [CKV_K8S_1]\n")
    with security.checkov_policy(tmp_path) as policy:
        assert policy == tmp_path / ".checkov.yaml"


# --- a scanner with nothing to examine is ERROR, and runs nothing -------------------------------------


@pytest.mark.parametrize(
    ("scan", "expected"),
    [
        (lambda root: security.bandit(root, []), "set security.paths"),
        (lambda root: security.pip_audit(root, []), "no lock files: set security.lock_files"),
        (lambda root: security.hadolint(root, []), "no Dockerfile in the project"),
        (lambda root: security.checkov(root, []), "no environment with target: k8s (k8s.overlay)"),
    ],
)
def test_a_scanner_given_nothing_is_an_error(tmp_path: Path, scan, expected: str) -> None:
    result = scan(tmp_path)
    assert result.status == "error"
    assert expected in result.detail
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written


def test_main_refuses_an_unknown_scanner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        security.main(["--only", "bandit,trivy"], root=tmp_path, environ=ENV)
    assert exit_.value.code == 2
    assert "unknown scanner 'trivy'" in capsys.readouterr().err
