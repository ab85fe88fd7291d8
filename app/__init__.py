"""conveyor's reference service: a small notes API on Postgres and Redis, shaped like production."""

__version__ = "0.1.0"
