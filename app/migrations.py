"""Schema migrations: ordered SQL steps, applied once each under an advisory lock (safe to run twice)."""

from __future__ import annotations

import psycopg

# Append only: a released step is never edited.
STEPS: list[tuple[int, str, str]] = [
    (
        1,
        "create notes",
        """
        CREATE TABLE notes (
            id BIGSERIAL PRIMARY KEY,
            title TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
            body TEXT NOT NULL DEFAULT '',
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """,
    ),
    (2, "index notes by creation", "CREATE INDEX notes_created_at ON notes (created_at DESC, id DESC)"),
    (
        3,
        "note analysis by the worker",
        # Nullable, no default: a catalog-only change, no table rewrite. NULL processed_at = not yet
        # processed, so the notes written before this step are the worker's first sweep.
        """
        ALTER TABLE notes
            ADD COLUMN words INTEGER,
            ADD COLUMN summary TEXT,
            ADD COLUMN tags TEXT[],
            ADD COLUMN processed_at TIMESTAMPTZ
        """,
    ),
    (
        4,
        "index unprocessed notes",
        "CREATE INDEX notes_unprocessed ON notes (id) WHERE processed_at IS NULL",
    ),
]
LOCK_ID = 7_160_531  # pg_advisory_lock key shared by every migrator of this app


def migrate(database_url: str) -> list[int]:
    """Apply pending steps; return the versions applied now (empty when the schema is current)."""
    applied_now: list[int] = []
    with psycopg.connect(database_url, connect_timeout=10, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in STEPS:
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # type: ignore[arg-type]  # literal SQL from STEPS above
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now
