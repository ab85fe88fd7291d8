"""GET over HTTP: the only reads the kit does itself (smoke probes: a version document, a health route)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from conveyor.errors import ConveyorError


def get_ok(url: str, timeout: float = 5) -> bytes:
    """The body of a 2xx answer; anything else (status >= 300, no answer) is a ConveyorError."""
    if not url.startswith(("http://", "https://")):
        raise ConveyorError(f"GET {url}: only http:// and https:// URLs are probed")
    try:
        # The scheme is checked above; the URL is the environment's own or our container's.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # nosec B310
            body: bytes = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ConveyorError(f"GET {url}: {getattr(exc, 'reason', exc)}") from None
    return body


def get_json(url: str, timeout: float = 5) -> dict[str, object]:
    body = get_ok(url, timeout)
    try:
        data = json.loads(body)
    except ValueError:
        raise ConveyorError(f"GET {url}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise ConveyorError(f"GET {url}: expected a JSON object")
    return data
