"""SQLAlchemy engines for the registry and deployment-state stores (SQLite or PostgreSQL)."""
from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url


def normalize_url(url: str) -> str:
    """Map ``postgres://`` / ``postgresql://`` to the psycopg2 driver we install."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


@functools.lru_cache(maxsize=32)
def make_engine(url: str) -> sa.Engine:
    """One engine per URL per process. SQLite files get WAL and a busy timeout so the CLI,
    Dagster runs and serving processes can share them."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, future=True)
