"""`conveyor init`: detect an existing project's framework and write the files conveyor needs.

``detect`` reads the project (nothing is imported or run); ``scaffold.render`` turns what it found into
files from the templates in package data; ``scaffold.apply`` writes only what is missing.
"""

from __future__ import annotations

from conveyor.init.detect import Detected, NotDetected, detect
from conveyor.init.hints import route_hints

__all__ = ["Detected", "NotDetected", "detect", "route_hints"]
