"""env.list and env.show: which environments exist and what one of them resolves to, with sources."""

from __future__ import annotations

from invoke.context import Context

from conveyor.tasks._base import load_config, project_root, task


@task(name="list")
def list_(c: Context) -> None:
    """List the environments (deploy/environments/*.yaml) and their targets."""
    from conveyor import config

    root = project_root()
    names = config.list_environments(root)
    if not names:
        print(f"no environments: add {config.ENV_DIR}/<name>.yaml")
        return
    for name in names:
        cfg = load_config(name)
        marker = " (default)" if cfg.values["default_env"].value == name else ""
        print(f"{name:<14} {cfg.env.target:<8} {cfg.env.url or '-'}{marker}")


@task(help={"env": "environment name (default: local)"})
def show(c: Context, env: str = "") -> None:
    """Print the merged config of an environment: every value and where it came from (secrets redacted)."""
    from conveyor import config

    cfg = load_config(env or None)
    rows = config.describe(cfg)
    width = max(len(key) for key, _, _ in rows)
    vwidth = min(48, max(len(val) for _, val, _ in rows))
    print(f"environment {cfg.env.name} (target {cfg.env.target})")
    for key, val, source in rows:
        print(f"  {key:<{width}}  {val:<{vwidth}}  {source}")


@task(help={"env": "environment whose `env:` secrets to generate (default: local)"})
def init(c: Context, env: str = "") -> None:
    """Generate random values in .env for the environment's unset `env:` secrets (local machines only)."""
    import secrets as random_source

    from conveyor import dotenv_file

    cfg = load_config(env or None)
    missing = {
        ref.target: random_source.token_urlsafe(24)
        for ref in cfg.env.secrets.values()
        if ref.scheme == "env" and ref.target not in cfg.dotenv
    }
    if not missing:
        print(f"{cfg.env.name}: every env: secret is already set")
        return
    if not c.config.run.dry:
        dotenv_file.update(cfg.root / ".env", missing)
    print(f"{cfg.env.name}: generated {', '.join(sorted(missing))} in .env (values not shown)")


@task
def keys(c: Context) -> None:
    """Print every configuration key with its default and meaning (the README's table)."""
    from conveyor import config

    print(config.schema_table(), end="")
