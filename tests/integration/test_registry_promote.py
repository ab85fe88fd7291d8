"""promote's copy between registries, on two real registries (Debian's docker-registry, two ports): the
destination gets the very digest, blobs and manifest; nothing is pulled into an engine."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import config, registry
from conveyor.errors import ConfigError
from conveyor.registry import Ref, RegistryClient, RegistryError
from conveyor.runner import Runner
from tests.conftest import Project
from tests.integration.conftest import serve_registry

pytestmark = pytest.mark.docker
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def anonymous(host: str) -> tuple[str, str] | None:
    return None


@pytest.fixture
def registries() -> Iterator[tuple[str, str]]:
    """Two independent registries on 127.0.0.1 (the source and the destination environment's)."""
    with serve_registry() as host_a, serve_registry() as host_b:
        yield host_a, host_b


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(host: str, repository: str, layer: bytes, tag: str = "src") -> str:
    """An OCI image (config + one layer) pushed over the distribution API; returns its manifest digest."""
    client = RegistryClient(host, anonymous)
    config_blob = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    for blob in (config_blob, layer):
        client.upload(repository, digest(blob), io.BytesIO(blob), len(blob))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config_blob),
                       "size": len(config_blob)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer),
                        "size": len(layer)}],
        },
        indent=3,  # unusual formatting: a copy that re-serialised the JSON would change the digest
    ).encode()  # fmt: skip
    client.put_manifest(repository, tag, OCI_MANIFEST, manifest)
    return digest(manifest)


def dest_config(tmp_path: Path, registry_url: str) -> config.Config:
    project = Project(tmp_path)
    project.write("invoke.yaml", "conveyor:\n  project:\n    name: shop\n  image:\n    name: shop\n")
    project.write(
        "deploy/environments/production.yaml",
        f"target: k8s\nurl: https://shop.example.com\nregistry: {registry_url}\n"
        "k8s:\n  overlay: k8s/overlays/production\n  namespace: shop\n",
    )
    return config.load(tmp_path, "production", environ={})


def test_promote_copies_the_digest_into_the_destinations_registry(
    registries: tuple[str, str], tmp_path: Path
) -> None:
    a, b = registries
    layer = b"layer bytes " * 50_000
    source_digest = push_image(a, "team/shop", layer)
    out = io.StringIO()
    dest = dest_config(tmp_path, f"{b}/prod")
    image = registry.promote_image(
        Runner(out=out), f"{a}/team/shop@{source_digest}", dest, "bbbbbbbbbbbb", credentials=anonymous
    )
    assert image == f"{b}/prod/shop@{source_digest}"
    client = RegistryClient(b, anonymous)
    media, body = client.manifest("prod/shop", "bbbbbbbbbbbb")  # tagged with the sha, by the same digest
    assert (media, digest(body)) == (OCI_MANIFEST, source_digest)
    assert client.has_blob("prod/shop", digest(layer))
    # again: every blob is there already, only the manifest is put (idempotent)
    again = registry.promote_image(
        Runner(out=out), f"{a}/team/shop@{source_digest}", dest, "x", credentials=anonymous
    )
    assert again == image


def test_an_index_is_copied_with_its_manifests(registries: tuple[str, str]) -> None:
    a, b = registries
    child = push_image(a, "shop", b"amd64 layer")
    src = RegistryClient(a, anonymous)
    _, child_body = src.manifest("shop", child)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body),
                        "platform": {"architecture": "amd64", "os": "linux"}}]}
    ).encode()  # fmt: skip
    src.put_manifest("shop", "multi", OCI_INDEX, index)
    copied = registry.copy(
        Ref(a, "shop", digest(index)),
        Ref(b, "shop", digest(index)),
        "v1",
        src=src,
        dst=RegistryClient(b, anonymous),
    )
    assert str(copied) == f"{b}/shop@{digest(index)}"
    dst = RegistryClient(b, anonymous)
    assert dst.has_manifest("shop", child)
    assert digest(dst.manifest("shop", "v1")[1]) == digest(index)


def test_same_registry_and_dry_copy_nothing(registries: tuple[str, str], tmp_path: Path) -> None:
    a, b = registries
    source_digest = push_image(a, "prod/shop", b"l")
    out = io.StringIO()
    same = dest_config(tmp_path / "same", f"{a}/prod")
    image = f"{a}/prod/shop@{source_digest}"
    assert registry.promote_image(Runner(out=out), image, same, "t", credentials=anonymous) == image
    assert "pulls from" in out.getvalue()
    other = dest_config(tmp_path / "other", f"{b}/prod")
    dry = Runner(out=out, dry=True)
    assert (
        registry.promote_image(dry, image, other, "t", credentials=anonymous)
        == f"{b}/prod/shop@{source_digest}"
    )
    assert "[dry] would copy" in out.getvalue()
    assert not RegistryClient(b, anonymous).has_manifest("prod/shop", source_digest)


def test_bad_sources_are_one_line(registries: tuple[str, str], tmp_path: Path) -> None:
    a, b = registries
    dest = dest_config(tmp_path, f"{b}/prod")
    with pytest.raises(ConfigError, match="image 127.0.0.1:.*/shop:v1: not pinned by digest"):
        registry.promote_image(Runner(out=io.StringIO()), f"{a}/shop:v1", dest, "t", credentials=anonymous)
    missing = f"{a}/shop@sha256:" + "0" * 64
    with pytest.raises(
        RegistryError, match="GET http://127.0.0.1:.*/v2/shop/manifests/sha256:0+: HTTP 404 MANIFEST_UNKNOWN"
    ):
        registry.promote_image(Runner(out=io.StringIO()), missing, dest, "t", credentials=anonymous)


def test_an_image_the_engine_pushed_is_promoted_and_pullable_by_digest(
    registries: tuple[str, str], docker_engine: None, base_image: str, tmp_path: Path
) -> None:
    """A Docker-pushed image (Docker's manifest type, gzip layers the engine made) keeps its digest, and the
    engine pulls it from the destination by that digest."""
    from conveyor.docker_engine import DockerEngine

    a, b = registries
    runner = Runner(out=io.StringIO())
    engine = DockerEngine(runner)
    engine.tag(base_image, f"{a}/src/app", "v1")
    pushed = engine.push(f"{a}/src/app", "v1")
    dest = dest_config(tmp_path, f"{b}/prod")
    image = registry.promote_image(runner, f"{a}/src/app@{pushed}", dest, "v1", credentials=anonymous)
    assert image == f"{b}/prod/shop@{pushed}"
    try:
        pulled = subprocess.run(["docker", "pull", image], capture_output=True, text=True, check=False)
        assert pulled.returncode == 0, pulled.stderr
        assert f"Digest: {pushed}" in pulled.stdout
    finally:
        subprocess.run(["docker", "rmi", f"{a}/src/app:v1", image], capture_output=True, check=False)
