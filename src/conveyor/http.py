"""GET a JSON document: the one HTTP read the kit does itself (smoke probes, /version checks)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from conveyor.errors import ConveyorError


def get_json(url: str, timeout: float = 5) -> dict[str, object]:
    if not url.startswith(("http://", "https://")):
        raise ConveyorError(f"GET {url}: only http:// and https:// URLs are probed")
    try:
        # The scheme is checked above; the URL is the environment's own or our container's.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # nosec B310
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConveyorError(f"GET {url}: {getattr(exc, 'reason', exc)}") from None
    if not isinstance(data, dict):
        raise ConveyorError(f"GET {url}: expected a JSON object")
    return data
