"""logs: every process's logs on any target (compose, ECS, Kubernetes), merged in time order."""

from __future__ import annotations

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, task


@task(
    help={
        "env": "environment (default: local)",
        "process": "one process (default: every process of the app contract)",
        "since": "only lines newer than this: 30s, 10m, 2h, 1d",
        "follow": "keep polling for new lines (Ctrl-C stops)",
        "tail": "the last N lines (0: every line)",
        "service": "compose only: one service of the stack, a process or not (postgres, redis...)",
    }
)
def logs(
    c: Context,
    env: str = "",
    process: str = "",
    since: str = "",
    follow: bool = False,
    tail: int = 100,
    service: str = "",
) -> None:
    """Show the logs of every process (or one) merged in time order, each line naming process/instance."""
    from conveyor import logs as core

    cfg = load_config(env or None)
    req = core.request(
        cfg.app, cfg.env.target, process=process, since=since, tail=tail, follow=follow, service=service
    )
    runner = make_runner(c)
    source = core.source_for(cfg, runner, req)
    try:
        core.show(source, req, runner.say, interval=core.POLL[cfg.env.target])
    except KeyboardInterrupt:  # the way --follow ends
        if not follow:
            raise
