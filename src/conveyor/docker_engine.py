"""Thin adapter over the docker SDK (inspect, run, push, login); the SDK is imported on first use.

Builds go through the docker CLI instead (conveyor.images): the SDK cannot drive BuildKit.
Every method that changes something honours the runner's --dry: it says what it would do and does not.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.runner import Runner


class EngineError(ConveyorError):
    """The Docker engine refused or could not be reached."""


@dataclass(frozen=True)
class ImageInfo:
    id: str
    size: int
    labels: dict[str, str]
    repo_digests: tuple[str, ...]
    env: tuple[str, ...]
    user: str


class DockerEngine:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                self._client = docker.from_env(timeout=120)
                self._client.ping()
            except DockerException as exc:
                raise EngineError(
                    f"cannot reach the Docker engine: {_first_line(exc)} (is dockerd running?)"
                ) from None
        return self._client

    def _errors(self) -> tuple[type[BaseException], ...]:
        """What the SDK raises: its own errors, and requests' when the engine goes away mid-run."""
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        return (DockerException, RequestException)

    def containers(self, labels: list[str]) -> list[str]:
        """Ids of the containers (running or not) carrying every ``key=value`` label."""
        try:
            return [str(c.id) for c in self.client.containers.list(all=True, filters={"label": labels})]
        except self._errors() as exc:
            raise EngineError(f"list containers: {_first_line(exc)}") from None

    def inspect_image(self, ref: str) -> ImageInfo | None:
        from docker.errors import ImageNotFound

        try:
            attrs = self.client.images.get(ref).attrs
        except ImageNotFound:
            return None
        except self._errors() as exc:
            raise EngineError(f"inspect {ref}: {_first_line(exc)}") from None
        config = attrs.get("Config") or {}
        return ImageInfo(
            id=attrs["Id"],
            size=int(attrs.get("Size", 0)),
            labels=dict(config.get("Labels") or {}),
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
            env=tuple(config.get("Env") or ()),
            user=str(config.get("User") or ""),
        )

    def history(self, ref: str) -> list[str]:
        """The command line of every layer (what `docker history --no-trunc` shows)."""
        try:
            return [str(h.get("CreatedBy", "")) for h in self.client.images.get(ref).history()]
        except self._errors() as exc:
            raise EngineError(f"history {ref}: {_first_line(exc)}") from None

    def tag(self, ref: str, repository: str, tag: str) -> None:
        if self.runner.dry:
            self.runner.say(f"[dry] docker tag {ref} {repository}:{tag}")
            return
        try:
            self.client.images.get(ref).tag(repository, tag)
        except self._errors() as exc:
            raise EngineError(f"tag {ref}: {_first_line(exc)}") from None

    def push(self, repository: str, tag: str) -> str:
        """Push ``repository:tag`` and return the digest the registry stored."""
        if self.runner.dry:
            self.runner.say(f"[dry] docker push {repository}:{tag}")
            return "sha256:" + "0" * 64
        digest = ""
        try:
            for line in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in line:
                    raise EngineError(f"push {repository}:{tag}: {line['error']}")
                digest = (line.get("aux") or {}).get("Digest", digest)
        except self._errors() as exc:
            raise EngineError(f"push {repository}:{tag}: {_first_line(exc)}") from None
        if not digest:
            raise EngineError(f"push {repository}:{tag}: the registry returned no digest")
        return str(digest)

    def login(self, registry: str, username: str, password: str) -> None:
        """Log in through the SDK: the password never appears on a command line."""
        self.runner.redact.register(password)
        if self.runner.dry:
            self.runner.say(f"[dry] docker login {registry} as {username}")
            return
        try:
            self.client.login(username=username, password=password, registry=registry, reauth=True)
        except self._errors() as exc:
            raise EngineError(f"login to {registry}: {self.runner.redact(_first_line(exc))}") from None

    def run(
        self,
        image: str,
        *,
        env: dict[str, str],
        ports: dict[str, int | None],
        name: str | None = None,
        command: list[str] | None = None,
    ) -> str:
        """Start a detached container (``command`` replaces the image's CMD); returns its id."""
        if self.runner.dry:
            self.runner.say(f"[dry] docker run -d {image}")
            return "dry-run"
        try:
            container = self.client.containers.run(
                image, command=command or None, detach=True, environment=env, ports=ports, name=name
            )
        except self._errors() as exc:
            raise EngineError(f"run {image}: {_first_line(exc)}") from None
        return str(container.id)

    def container(self, container_id: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_container(container_id))
        except self._errors() as exc:
            raise EngineError(f"inspect container {container_id[:12]}: {_first_line(exc)}") from None

    def logs(self, container_id: str, tail: int = 20) -> str:
        try:
            return str(self.client.api.logs(container_id, tail=tail).decode("utf-8", "replace"))
        except self._errors():
            return ""

    def stop(self, container_id: str, timeout: int) -> None:
        """SIGTERM (the image's stop signal), then SIGKILL after ``timeout`` seconds."""
        if self.runner.dry:
            self.runner.say(f"[dry] docker stop --time {timeout} {container_id[:12]}")
            return
        try:
            self.client.api.stop(container_id, timeout=timeout)
        except self._errors() as exc:
            raise EngineError(f"stop container {container_id[:12]}: {_first_line(exc)}") from None

    def put_file(self, container_id: str, path: str, content: str) -> None:
        """Write ``content`` to ``path`` inside a running container (its directories are created)."""
        import io
        import posixpath
        import tarfile

        if self.runner.dry:
            self.runner.say(f"[dry] write {path} in container {container_id[:12]}")
            return
        data = content.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        try:
            self.client.api.put_archive(container_id, "/", buffer.getvalue())
        except self._errors() as exc:
            where = posixpath.dirname(path)
            raise EngineError(f"write {where} in container {container_id[:12]}: {_first_line(exc)}") from None

    def remove(self, container_id: str) -> None:
        from docker.errors import NotFound

        if self.runner.dry:
            return
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except self._errors() as exc:
            raise EngineError(f"remove container {container_id[:12]}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    with contextlib.suppress(ValueError, AttributeError):  # the SDK often wraps the engine's JSON body
        text = json.loads(text).get("message", text)
    return text.splitlines()[0] if text else type(exc).__name__
