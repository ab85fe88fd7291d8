"""AWS access for one environment: a lazily created boto3 session, and botocore errors made readable.

boto3 is imported on first use only (never by `invoke --list`). Credentials are checked before any call:
no credentials and no endpoint is a one-line error, not a hang on the instance metadata service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.config import EcsTarget
from conveyor.errors import ConveyorError


class AwsError(ConveyorError):
    """An AWS API call failed; the message names the call and AWS's error code."""


def credential_source(environ: Mapping[str, str], endpoint: str) -> str | None:
    """Where credentials would come from, without calling anything (None: nowhere)."""
    if endpoint:
        return f"endpoint {endpoint}"
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return "AWS_ACCESS_KEY_ID in the environment"
    if environ.get("AWS_PROFILE"):
        return f"profile {environ['AWS_PROFILE']}"
    if environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return "container or web-identity credentials"
    creds = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials")))
    return f"credentials file {creds}" if creds.is_file() else None


class AwsClients:
    """``clients("ecs")`` -> a cached boto3 client for the environment's region/profile/endpoint."""

    def __init__(self, target: EcsTarget, environ: Mapping[str, str]) -> None:
        self.target = target
        self.environ = environ
        self._session: Any = None
        self._clients: dict[str, Any] = {}

    def check(self) -> None:
        if credential_source(self.environ, self.target.endpoint_url) is None and not self.target.profile:
            raise AwsError(
                "no AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws/credentials) and no endpoint_url"
            )

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            self.check()
            if self._session is None:
                import boto3

                # boto3 reads only the process environment: credentials and region kept in .env files
                # (merged into ``environ``) are handed over explicitly.
                env = self.environ
                keys = env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")
                self._session = boto3.session.Session(
                    aws_access_key_id=env["AWS_ACCESS_KEY_ID"] if keys else None,
                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"] if keys else None,
                    aws_session_token=(env.get("AWS_SESSION_TOKEN") or None) if keys else None,
                    profile_name=None if keys else (self.target.profile or env.get("AWS_PROFILE") or None),
                    region_name=self.target.region
                    or env.get("AWS_REGION")
                    or env.get("AWS_DEFAULT_REGION")
                    or None,
                )
            self._clients[service] = self._session.client(
                service, endpoint_url=self.target.endpoint_url or None
            )
        return self._clients[service]


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(call: str, exc: BaseException) -> AwsError:
    """botocore's exceptions -> one AwsError line naming the call."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        return AwsError(
            f"{call}: {err.get('Code', type(exc).__name__)}: {err.get('Message', '')}".rstrip(": ")
        )
    return AwsError(f"{call}: {type(exc).__name__}: {exc}")
