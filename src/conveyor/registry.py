"""Copy an image from one registry to another by digest, over the OCI distribution API: what `promote`
does when the destination environment pulls from another registry than the source.

The manifest's bytes are copied as they are (blobs first, then the manifest, children of an index before
the index), so the destination serves the very digest that passed the source environment: no Docker
engine, no pull, no re-compression. Spec: https://github.com/opencontainers/distribution-spec (pull:
GET/HEAD manifests and blobs; push: POST an upload, PUT it with ?digest=, PUT the manifest). Loopback
registries are spoken to over http (as the Docker engine does), the others over https. Credentials: ECR
from GetAuthorizationToken; others from the `auths` of the Docker config (a Bearer token is asked for
when the registry answers 401, anonymously when there are no credentials).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from conveyor.config import Config
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    *INDEX_TYPES,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
CHUNK = 1 << 20
Credentials = Callable[[str], tuple[str, str] | None]  # registry host -> (user, password)


class RegistryError(ConveyorError):
    """A registry refused or failed a request; the message names the request and the registry's reason."""


@dataclass(frozen=True)
class Ref:
    """``host/repository@sha256:...``: where an image is, by digest."""

    host: str
    repository: str
    digest: str

    @classmethod
    def parse(cls, image: str) -> Ref:
        name, sep, digest = image.partition("@")
        if not sep or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ConfigError(f"image {image}: not pinned by digest (repository@sha256:...)")
        name = name.rsplit(":", 1)[0] if name.rfind(":") > name.rfind("/") else name  # a tag beside it
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return cls(first, rest, digest)
        return cls("registry-1.docker.io", name if rest else f"library/{name}", digest)

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}"


def docker_credentials(config: Path | None = None) -> Credentials:
    """Credentials from the Docker config's ``auths`` (what `docker login` writes without a helper)."""
    path = config or Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"

    def lookup(host: str) -> tuple[str, str] | None:
        try:
            auths = json.loads(path.read_text(encoding="utf-8")).get("auths") or {}
        except (OSError, ValueError):
            return None
        for key in (host, f"https://{host}", f"http://{host}"):
            encoded = (auths.get(key) or {}).get("auth")
            if encoded:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
                return user, password
        return None

    return lookup


class RegistryClient:
    """One registry's distribution API: the few calls a copy needs."""

    def __init__(self, host: str, credentials: Credentials, timeout: float = 120) -> None:
        scheme = "http" if host.split(":")[0] in LOOPBACK or host.startswith("[::1]") else "https"
        self.host = host
        self.base = f"{scheme}://{host}"
        self.credentials = credentials
        self.timeout = timeout
        self._auth: str | None = None

    def _open(self, method: str, url: str, headers: Mapping[str, str], body: bytes | IO[bytes] | None) -> Any:
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310
        if self._auth:
            request.add_header("Authorization", self._auth)
        # The URL is the registry's own (scheme fixed above), never user input turned into a file path.
        return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310  # nosec B310

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | IO[bytes] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Any:
        """The response of ``method path`` (its status in ``ok``); a 401 is answered once with a token."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        for attempt in (1, 2):
            if hasattr(body, "seek"):
                body.seek(0)  # type: ignore[union-attr]
            try:
                response = self._open(method, url, headers or {}, body)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1 and self._login(exc.headers.get("WWW-Authenticate", "")):
                    continue
                if exc.code in ok:
                    return exc
                raise RegistryError(f"{method} {url}: HTTP {exc.code} {_reason(exc)}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise RegistryError(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None
            if response.status not in ok:
                raise RegistryError(f"{method} {url}: HTTP {response.status}")
            return response
        raise RegistryError(f"{method} {url}: HTTP 401 (unauthorized with the credentials found)")

    def _login(self, challenge: str) -> bool:
        """Basic credentials, or a Bearer token from the realm the 401 named; False if there is nothing."""
        creds = self.credentials(self.host)
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else None
        if challenge.lower().startswith("basic"):
            self._auth = basic
            return basic is not None
        if not challenge.lower().startswith("bearer"):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if not params.get("realm", "").startswith(("https://", "http://")):
            return False  # a token service is only ever asked over http(s)
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        request = urllib.request.Request(f"{params['realm']}?{query}")  # noqa: S310 - scheme checked
        if basic:
            request.add_header("Authorization", basic)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310  # nosec B310
                token = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"token from {params['realm']}: {getattr(exc, 'reason', exc)}") from None
        self._auth = f"Bearer {token.get('token') or token.get('access_token', '')}"
        return True

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes]:
        """(media type, exact bytes) of a manifest or index."""
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        with self.request("GET", f"/v2/{repository}/manifests/{reference}", headers=accept) as response:
            media = str(response.headers.get("Content-Type", "")).split(";")[0]
            return media, bytes(response.read())

    def has_blob(self, repository: str, digest: str) -> bool:
        return _found(self.request("HEAD", f"/v2/{repository}/blobs/{digest}", ok=(200, 404)))

    def has_manifest(self, repository: str, digest: str) -> bool:
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        return _found(
            self.request("HEAD", f"/v2/{repository}/manifests/{digest}", headers=accept, ok=(200, 404))
        )

    def download(self, repository: str, digest: str, into: IO[bytes]) -> int:
        """Stream a blob into ``into``, checking its digest; returns its size."""
        sha = hashlib.sha256()
        size = 0
        with self.request("GET", f"/v2/{repository}/blobs/{digest}") as response:
            while chunk := response.read(CHUNK):
                sha.update(chunk)
                into.write(chunk)
                size += len(chunk)
        if f"sha256:{sha.hexdigest()}" != digest:
            raise RegistryError(f"blob {digest} of {self.host}/{repository}: the content has another digest")
        return size

    def upload(self, repository: str, digest: str, data: IO[bytes], size: int) -> None:
        """A monolithic upload: POST for a location, PUT the bytes there with ``?digest=``."""
        with self.request("POST", f"/v2/{repository}/blobs/uploads/", ok=(202,)) as response:
            location = str(response.headers["Location"])
        url = urllib.parse.urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        self.request("PUT", url, headers=headers, body=data, ok=(201,)).close()

    def put_manifest(self, repository: str, reference: str, media: str, body: bytes) -> str:
        headers = {"Content-Type": media}
        with self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", headers=headers, body=body, ok=(201,)
        ) as response:
            return str(response.headers.get("Docker-Content-Digest", ""))


def copy(source: Ref, dest: Ref, tag: str, *, src: RegistryClient, dst: RegistryClient) -> Ref:
    """Copy ``source`` (by digest) to ``dest``'s repository, tagged ``tag``; the digest is kept."""
    media, body = src.manifest(source.repository, source.digest)
    if f"sha256:{hashlib.sha256(body).hexdigest()}" != source.digest:
        raise RegistryError(f"{source}: the registry answered a manifest with another digest")
    document = json.loads(body)
    media = media if media in MANIFEST_TYPES else str(document.get("mediaType", ""))
    if media in INDEX_TYPES:
        for child in document.get("manifests") or []:
            digest = str(child["digest"])
            if not dst.has_manifest(dest.repository, digest):
                copy(Ref(source.host, source.repository, digest), dest, digest, src=src, dst=dst)
    elif media in MANIFEST_TYPES:
        for blob in [document["config"], *(document.get("layers") or [])]:
            digest = str(blob["digest"])
            if dst.has_blob(dest.repository, digest):
                continue
            with tempfile.TemporaryFile() as spool:
                size = src.download(source.repository, digest, spool)
                dst.upload(dest.repository, digest, spool, size)
    else:
        raise RegistryError(f"{source}: unknown manifest type {media or '(none)'}")
    stored = dst.put_manifest(dest.repository, tag, media, body)
    if stored and stored != source.digest:
        raise RegistryError(f"{dest.name}:{tag}: the registry stored digest {stored}, not {source.digest}")
    return Ref(dest.host, dest.repository, source.digest)


def promote_image(
    runner: Runner, image: str, dest: Config, tag: str, *, credentials: Credentials | None = None
) -> str:
    """The reference the destination environment deploys for ``image`` (a digest running elsewhere):
    the same one when it pulls from the same repository, else a copy by digest into
    ``<registry>/<image.name>`` (tagged ``tag``). Under --dry nothing is copied."""
    if not dest.env.registry:
        return image  # compose: the engine's own image id
    source = Ref.parse(image)
    target = Ref.parse(f"{dest.env.registry.rstrip('/')}/{dest.image.name}@{source.digest}")
    if target.name == source.name:
        runner.say(f"{dest.env.name} pulls from {source.name} too: no copy")
        return image
    if runner.dry:
        runner.say(f"[dry] would copy {source} to {target.name}:{tag} (same digest)")
        return str(target)
    creds = credentials or _credentials_for(dest)
    with runner.step(f"copy {source.digest[:19]}... {source.name} -> {target.name}:{tag}"):
        copied = copy(
            source,
            target,
            tag,
            src=RegistryClient(source.host, creds),
            dst=RegistryClient(target.host, creds),
        )
    return str(copied)


def _credentials_for(dest: Config) -> Credentials:
    """ECR hosts get a GetAuthorizationToken login (the destination's AWS settings); others the Docker
    config's."""
    from conveyor.images import is_ecr

    docker = docker_credentials()

    def lookup(host: str) -> tuple[str, str] | None:
        if is_ecr(host) and is_ecr(dest.env.registry) and dest.env.registry.startswith(host):
            from conveyor.aws import AwsClients, translate

            try:
                data = AwsClients(dest.env.ecs, dest.dotenv)("ecr").get_authorization_token()
            except Exception as exc:
                raise translate("get_authorization_token", exc) from None
            user, _, password = (
                base64.b64decode(data["authorizationData"][0]["authorizationToken"]).decode().partition(":")
            )
            return user, password
        return docker(host)

    return lookup


def _found(response: Any) -> bool:
    """A HEAD answered 200 (a 404 comes back as the HTTPError itself)."""
    status = getattr(response, "status", None) or getattr(response, "code", 0)
    response.close()
    return bool(status == 200)


def _reason(exc: urllib.error.HTTPError) -> str:
    """The registry's own error message (the distribution spec's ``errors`` body), else the HTTP reason."""
    try:
        errors = json.loads(exc.read()).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or str(exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
