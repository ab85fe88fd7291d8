"""What to add when the project lacks a health or version route: the handler for its framework."""

from __future__ import annotations

from conveyor.init.detect import HTTP_PROCESS, Detected
from conveyor.init.scaffold import template


def route_hints(det: Detected) -> list[str]:
    """One block per missing route: where to add it, the handler, and the config line that follows."""
    where = det.app_file or "the module that creates the app"
    if det.framework == "django":
        where = det.app_file or "<project>/urls.py"
    blocks = []
    if not det.health:
        blocks.append(
            f"no health route found: add this to {where} (invoke.yaml already says `health: /health`):\n\n"
            + template(f"snippets/{det.framework}-health.tmpl")
        )
    if not det.version:
        blocks.append(
            f"no version route found (invoke.yaml says `version: none`, so a deploy is proven by the image "
            f"the orchestrator runs); to report the commit, add this to {where}, then set "
            f"`processes.{HTTP_PROCESS}.version: /version` in invoke.yaml:\n\n"
            + template(f"snippets/{det.framework}-version.tmpl")
        )
    return blocks
