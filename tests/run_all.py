"""`make test`: the whole suite on SQLite, then again on PostgreSQL + Redis.

The second pass uses a fresh database (dropped and created here) and Redis db 15.
Without a reachable PostgreSQL or Redis it says plainly that the pass was skipped; in CI (the
environment has CI set) that is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT = os.environ.get("TEST_PG_HOST", "127.0.0.1"), 5432
REDIS_HOST, REDIS_PORT = os.environ.get("TEST_REDIS_HOST", "127.0.0.1"), 6379
TEST_DB = "chuzhika_test"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def fresh_database() -> str:
    import psycopg

    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{TEST_DB}"


def pytest(env: dict[str, str], label: str) -> int:
    print(f"\n===== {label} =====", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:]], cwd=ROOT, env=env)


def main() -> int:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    base.pop("TEST_DATABASE_URL", None)
    base.pop("TEST_REDIS_URL", None)
    failed = pytest(base, "pass 1: SQLite, in-memory dedupe")
    if reachable(PG_HOST, PG_PORT) and reachable(REDIS_HOST, REDIS_PORT):
        env = dict(base, TEST_DATABASE_URL=fresh_database(),
                   TEST_REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/15")
        failed |= pytest(env, "pass 2: PostgreSQL + Redis")
    elif os.environ.get("CI"):
        print("\n===== pass 2: PostgreSQL + Redis FAILED — PostgreSQL (127.0.0.1:5432) or Redis "
              "(127.0.0.1:6379) is not reachable, and in CI this pass may not be skipped. =====")
        failed = 1
    else:
        print("\n===== pass 2: PostgreSQL + Redis SKIPPED — PostgreSQL (127.0.0.1:5432) or Redis "
              "(127.0.0.1:6379) is not reachable on this machine. Only SQLite was tested. =====")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
