"""deploy, plan, rollback, history, lock.release: the deploy model from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, task

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.deploy import Release
    from conveyor.runner import Runner

ENV_HELP = {"env": "environment (default: local)"}


def _release(c: Context, env: str) -> tuple[Config, Runner, Release]:
    """Config, runner and the release to deploy: the last build, by digest in the env's registry.

    With ``push`` (a real deploy) the image is pushed first; a plan or --dry run never pushes and shows
    the digest of an earlier push, or the tag that would be pushed.
    """
    from conveyor import images
    from conveyor.deploy import Release
    from conveyor.errors import ConfigError

    cfg = load_config(env or None)
    runner = make_runner(c)
    built = images.load_release(cfg.root)
    sha = str(built["git_sha"])
    if not cfg.env.registry:
        if cfg.env.target != "compose":
            raise ConfigError(
                f"environment {cfg.env.name}: target {cfg.env.target} pulls from a registry; set `registry`"
            )
        return cfg, runner, Release(str(built["image_id"]), sha)
    pushed = (built.get("pushed") or {}).get(cfg.env.name)
    tag = str(built["refs"][0]).rsplit(":", 1)[1]
    return cfg, runner, Release(pushed or f"{cfg.env.registry}/{cfg.image.name}:{tag}", sha)


@task(help=ENV_HELP)
def deploy(c: Context, env: str = "") -> None:
    """Deploy the last build: lock, plan, release, apply, wait, smoke probe, record; roll back on failure."""
    from conveyor.deploy import deployer_for

    cfg, runner, release = _release(c, env)
    deployer = deployer_for(cfg, runner, release.image)  # every static check happens here, before a push
    # A digest recorded for this environment's registry (`image.push`, e.g. by the CI build job) is deployed
    # as it is: no local image is needed, nothing is pushed again.
    recorded = release.image.startswith(f"{cfg.env.registry.rstrip('/')}/{cfg.image.name}@sha256:")
    if cfg.env.registry and not runner.dry and not recorded:
        from conveyor import images
        from conveyor.deploy import Release
        from conveyor.docker_engine import DockerEngine

        release = Release(images.push(runner, DockerEngine(runner), cfg), release.git_sha)
    deployer.deploy(release, dry=runner.dry)


@task(help=ENV_HELP)
def plan(c: Context, env: str = "") -> None:
    """Show what a deploy of the last build would change (nothing is changed)."""
    from conveyor.deploy import deployer_for

    cfg, runner, release = _release(c, env)
    deployer_for(cfg, runner, release.image).deploy(release, dry=True)


@task(help={**ENV_HELP, "to": "history entry number to go back to (default: the previous good release)"})
def rollback(c: Context, env: str = "", to: int = 0) -> None:
    """Deploy an earlier release again (same algorithm, verified): entry --to N or the previous good one."""
    from conveyor.deploy import Release, deployer_for, journal_for
    from conveyor.deploy.journal import find, last_good_before_current
    from conveyor.errors import UsageError

    if to < 0:
        raise UsageError(f"--to {to}: expected a history entry number (1 or more; see `invoke history`)")
    cfg = load_config(env or None)
    runner = make_runner(c)
    journal = journal_for(cfg, runner)  # the environment's journal: every checkout reads the same one
    entry = find(journal, cfg.env.name, to) if to else last_good_before_current(journal, cfg.env.name)
    if not entry.get("image") or not entry.get("git_sha"):
        raise UsageError(f"history entry {entry.get('id')} of {cfg.env.name} has no image to go back to")
    release = Release(str(entry["image"]), str(entry["git_sha"]))
    runner.say(f"rolling {cfg.env.name} back to entry {entry.get('id')} ({journal.where})")
    deployer_for(cfg, runner, release.image).deploy(release, dry=runner.dry, action="rollback")


@task(help={**ENV_HELP, "limit": "number of entries to show"})
def history(c: Context, env: str = "", limit: int = 20) -> None:
    """Show deploy history: live revisions (ECS, k8s) and the journal (who, when, sha, result)."""
    from conveyor.deploy import journal_for
    from conveyor.deploy.journal import FileJournal
    from conveyor.deploy.model import describe
    from conveyor.errors import ConveyorError, UsageError

    if limit < 1:
        raise UsageError(f"--limit {limit}: expected 1 or more entries")
    cfg = load_config(env or None)
    runner = make_runner(c)
    if cfg.env.target != "compose":  # ECS task definitions / Kubernetes rollout history, live
        from conveyor.deploy import target_for

        print(f"{cfg.env.name} ({cfg.env.target}), live revisions:")
        try:
            live = target_for(cfg, runner, "none").live_history()
        except Exception as exc:  # the journal below is still worth showing
            live = [f"unavailable: {cfg.env.target}: {describe(exc)}"]
        for line in live:
            print(f"  {line}")
        print()
    journal = journal_for(cfg, runner)
    local = FileJournal(cfg.root, cfg.env.name)
    unreachable = ""
    try:
        entries = journal.entries()
    except Exception as exc:
        if journal is local:
            raise
        unreachable = f"journal {journal.where} unreachable ({describe(exc)})"
        print(f"{unreachable}; this checkout's own file {local.where}:")
        journal, entries = local, local.entries()
    _print_entries(cfg.env.name, journal.where, entries[-limit:])
    if journal is not local and local.path.exists():
        print(
            f"(this checkout also kept {len(local.entries())} entries in {local.where}: "
            "written while the shared journal was unreachable)"
        )
    if unreachable:
        raise ConveyorError(unreachable)


def _print_entries(env: str, where: str, entries: list[dict[str, Any]]) -> None:
    """The journal as a table, oldest first."""
    if not entries:
        print(f"no deploys recorded for {env} in {where}")
        return
    print(f"{'#':>3}  {'when':<24} {'action':<9} {'sha':<13} {'result':<11} {'secs':>6}  who / note")
    for e in entries:
        sha = (e.get("git_sha") or "-")[:12]
        note = e.get("error") or (f"rollback of {e['rollback_of'][:12]}" if e.get("rollback_of") else "")
        print(
            f"{e.get('id', '?'):>3}  {e.get('when', '?'):<24} {e.get('action', '?'):<9} {sha:<13} "
            f"{e.get('result', '?'):<11} {e.get('duration', '?'):>6}  "
            f"{e.get('who', '?')}{' - ' + note if note else ''}"
        )


@task(name="release", help={**ENV_HELP, "force": "break the lock even if another deploy holds it"})
def release_lock(c: Context, env: str = "", force: bool = False) -> None:
    """Release an environment's deploy lock (with --force: break a stale or foreign one)."""
    from conveyor.deploy import lock_for
    from conveyor.errors import UsageError

    cfg = load_config(env or None)
    lock = lock_for(cfg)
    holder = lock.holder()
    if holder is None:
        print(f"{cfg.env.name} is not locked")
        return
    if not force:
        raise UsageError(f"{cfg.env.name} is locked by {holder.describe()}; add --force to break it")
    if c.config.run.dry:
        print(f"[dry] would break the lock of {cfg.env.name} held by {holder.describe()}")
        return
    lock.release(None, force=True)
    print(f"broke the lock of {cfg.env.name} held by {holder.describe()}")


@task(
    name="promote",
    help={"from_": "environment whose running digest is promoted", "to": "environment to deploy it to"},
)
def promote(c: Context, from_: str, to: str) -> None:
    """Deploy the exact digest running in one environment to the next (copied into its registry by digest)."""
    from conveyor import supply
    from conveyor.deploy import Release, deployer_for, target_for
    from conveyor.errors import ConveyorError, UsageError

    if from_ == to:
        raise UsageError(f"--from {from_} --to {to}: promote moves a release to ANOTHER environment")
    source = load_config(from_)
    runner = make_runner(c)
    serving = target_for(source, runner, "none").current()
    if serving is None:
        raise ConveyorError(f"nothing is serving in {source.env.name}: there is no digest to promote")
    dest = load_config(to)
    supply.gate(dest.root, serving.image, serving.git_sha, dest.values["security.max_severity"].value)
    runner.say(
        f"promoting {serving.git_sha[:12]} ({serving.image}) from {source.env.name} to {dest.env.name}"
    )
    deployer = deployer_for(dest, runner, serving.image)  # every static check, before anything is copied
    from conveyor import registry  # the destination's registry gets the same digest (no pull, no push)

    image = registry.promote_image(runner, serving.image, dest, serving.git_sha[:12])
    deployer.deploy(Release(image, serving.git_sha), dry=runner.dry, action="promote")
