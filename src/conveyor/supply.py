"""Supply chain: a CycloneDX SBOM read from the image's own virtualenv, and the promotion gate.

The SBOM is stored as reports/sbom/<digest>.cdx.json for the image id and, once pushed, for the registry
digest too. Promotion (staging -> production) moves one exact digest and refuses it without an SBOM,
without a security record of its git sha, or with findings above the configured severity.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.errors import CommandFailed, ConveyorError
from conveyor.runner import Runner

SBOM_DIR = Path("reports/sbom")
RECORD_DIR = Path("reports/security")
SEVERITIES = ("low", "medium", "high", "critical")
# Runs inside the image with ITS interpreter: what is installed there, not what the lock says.
LIST_DISTRIBUTIONS = (
    "import json, importlib.metadata as m; "
    "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions()})))"
)


class PromotionRefused(ConveyorError):
    """The digest may not be promoted; the message says which evidence is missing or failing."""


def sbom_path(root: Path, digest: str) -> Path:
    return root / SBOM_DIR / f"{digest.replace(':', '-')}.cdx.json"


def digest_of(image: str) -> str:
    """``repo@sha256:x`` -> ``sha256:x``; an image id stays as it is."""
    return image.split("@", 1)[1] if "@" in image else image


def sbom(runner: Runner, image: str, image_id: str, python: str) -> dict[str, Any]:
    """CycloneDX 1.5 document of the Python distributions ``python`` (image.python) sees in ``image``."""
    try:
        out = runner.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                python,
                image,
                "-c",
                LIST_DISTRIBUTIONS,
            ],
            capture=True,
            mutates=False,
        ).stdout
    except CommandFailed as exc:
        raise ConveyorError(f"SBOM of {image}: cannot list its Python packages ({exc.tail})") from None
    packages = json.loads(out)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "conveyor"}]},
            "component": {"type": "container", "name": image, "version": image_id, "bom-ref": image_id},
        },
        "components": [
            {
                "type": "library",
                "bom-ref": f"pkg:pypi/{name.lower()}@{version}",
                "name": name,
                "version": version,
                "purl": f"pkg:pypi/{name.lower()}@{version}",
            }
            for name, version in packages
        ],
    }


def save_sbom(root: Path, document: dict[str, Any], *digests: str) -> list[Path]:
    paths = []
    for digest in digests:
        path = sbom_path(root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def record_path(root: Path, git_sha: str) -> Path:
    return root / RECORD_DIR / f"record-{git_sha}.json"


def _scanners(root: Path, record: Path) -> list[dict[str, Any]]:
    """The scanners of a security record; a truncated or wrong-shaped record is one line naming it."""
    name = record.relative_to(root)
    again = "run `invoke security` again"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromotionRefused(f"{name}: not valid JSON ({str(exc).split(' (char ')[0]}); {again}") from None
    scanners = data.get("scanners") if isinstance(data, dict) else None
    if not isinstance(scanners, list):
        raise PromotionRefused(f"{name}: expected an object with a `scanners` list; {again}")
    for index, scanner in enumerate(scanners):
        ok = (
            isinstance(scanner, dict)
            and isinstance(scanner.get("name"), str)
            and isinstance(scanner.get("status"), str)
            and isinstance(scanner.get("counts", {}), dict)
            and all(isinstance(n, int) for n in scanner.get("counts", {}).values())
        )
        if not ok:
            raise PromotionRefused(
                f"{name}: scanners[{index}] needs `name`, `status` and `counts` (severity: number); {again}"
            )
    return scanners


def gate(root: Path, image: str, git_sha: str, max_severity: str) -> None:
    """Refuse (one line) unless ``image`` has an SBOM and ``git_sha`` a passing security record."""
    digest = digest_of(image)
    if not sbom_path(root, digest).is_file():
        raise PromotionRefused(
            f"{digest[:19]}... has no SBOM in {SBOM_DIR}/: build and push it with conveyor"
        )
    record = record_path(root, git_sha)
    if not record.is_file():
        raise PromotionRefused(
            f"no security record for {git_sha[:12]} ({RECORD_DIR}/): run `invoke security`"
        )
    limit = SEVERITIES.index(max_severity)
    for scanner in _scanners(root, record):
        if scanner["status"] == "error":
            raise PromotionRefused(f"security record of {git_sha[:12]}: {scanner['name']} did not run")
        for severity, count in scanner.get("counts", {}).items():
            rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)  # unrated: worst
            if count and rank > limit:
                name = scanner["name"]
                raise PromotionRefused(
                    f"security record of {git_sha[:12]}: {name} has {count} {severity} finding(s), "
                    f"above security.max_severity={max_severity}"
                )
