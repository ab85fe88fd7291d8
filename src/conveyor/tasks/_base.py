"""What every task module shares: the error-to-exit mapping (in one place) and the per-run context."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task
from invoke.tasks import task as invoke_task

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.runner import Runner


@overload
def task(body: Callable[..., Any], /) -> Task[Any]: ...
@overload
def task(**kwargs: Any) -> Callable[[Callable[..., Any]], Task[Any]]: ...
def task(*args: Any, **kwargs: Any) -> Any:
    """``invoke.task`` mapping ConveyorError to ``Exit(one line, code)``: the only place that happens."""

    def decorate(body: Callable[..., Any]) -> Task[Any]:
        @functools.wraps(body)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return body(*a, **kw)
            except ConveyorError as exc:
                raise Exit(f"conveyor: {exc}", code=exc.exit_code) from None
            except KeyboardInterrupt:
                raise Exit("conveyor: interrupted", code=130) from None

        made: Task[Any] = invoke_task(**kwargs)(wrapper)
        return made

    if len(args) == 1 and callable(args[0]) and not kwargs:  # bare @task
        return decorate(args[0])
    return decorate


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding tasks.py (what invoke itself looks for)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "tasks.py").is_file():
            return folder
    return here


def make_runner(c: Context) -> Runner:
    from conveyor.runner import Runner

    return Runner(dry=bool(c.config.run.dry))


def load_config(env: str | None, flags: Mapping[str, Any] | None = None) -> Config:
    from conveyor import config

    return config.load(project_root(), env, environ=os.environ, flags=flags)
