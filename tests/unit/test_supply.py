"""The promotion gate reads evidence from files: an SBOM for the digest, a passing record for the sha."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor import supply

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example.com/app@{DIGEST}"
SHA = "c" * 40


def record(root: Path, scanners: list[dict]) -> None:
    path = supply.record_path(root, SHA)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"git_sha": SHA, "scanners": scanners}))


def with_sbom(root: Path) -> None:
    supply.save_sbom(root, {"bomFormat": "CycloneDX", "components": []}, DIGEST)


def test_digest_of() -> None:
    assert supply.digest_of(IMAGE) == DIGEST
    assert supply.digest_of(DIGEST) == DIGEST


def test_refuses_a_digest_without_sbom(tmp_path: Path) -> None:
    with pytest.raises(supply.PromotionRefused, match="sha256:abababababab... has no SBOM in reports/sbom/"):
        supply.gate(tmp_path, IMAGE, SHA, "medium")


def test_refuses_without_a_security_record(tmp_path: Path) -> None:
    with_sbom(tmp_path)
    with pytest.raises(supply.PromotionRefused, match="no security record for cccccccccccc"):
        supply.gate(tmp_path, IMAGE, SHA, "medium")


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"high": 1}, "bandit has 1 high finding.s., above security.max_severity=medium"),
        ({"unrated": 2}, "bandit has 2 unrated finding.s."),  # unrated (pip-audit advisories) counts as worst
    ],
)
def test_refuses_findings_above_the_threshold(tmp_path: Path, counts: dict, message: str) -> None:
    with_sbom(tmp_path)
    record(tmp_path, [{"name": "bandit", "status": "findings", "counts": counts}])
    with pytest.raises(supply.PromotionRefused, match=message):
        supply.gate(tmp_path, IMAGE, SHA, "medium")


def test_refuses_a_scanner_that_did_not_run(tmp_path: Path) -> None:
    with_sbom(tmp_path)
    record(tmp_path, [{"name": "checkov", "status": "error", "counts": {}}])
    with pytest.raises(supply.PromotionRefused, match="checkov did not run"):
        supply.gate(tmp_path, IMAGE, SHA, "medium")


def test_passes_with_evidence_and_findings_within_the_threshold(tmp_path: Path) -> None:
    with_sbom(tmp_path)
    record(
        tmp_path,
        [
            {"name": "bandit", "status": "findings", "counts": {"low": 3, "medium": 1}},
            {"name": "pip-audit", "status": "unverified", "counts": {}},
        ],
    )
    supply.gate(tmp_path, IMAGE, SHA, "medium")
