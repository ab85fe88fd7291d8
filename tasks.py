"""The reference project's tasks: everything comes from conveyor (`invoke --list` shows the menu)."""

from conveyor.tasks import namespace

ns = namespace()
