"""Issue 12's soak: the concurrent-recordings test, N times in a row, while other processes load every core.

    .venv/bin/python bench/soak_concurrency.py [--runs 30] [--burners 2]

Runs tests/edges/test_wecom.py::test_the_production_server_records_concurrent_messages_once_each (gunicorn,
two gevent workers, 24 recordings of three students at once plus a message WeChat delivers four
times; every reply 已记录, each message once, one unbroken audit chain per student) against
PostgreSQL + Redis (a fresh database `czk_soak`, Redis db 9), with `--burners` busy-looping
processes competing for the CPU. Prints each run's outcome and the count passed; exits 1 on any
failure. A race that shows only when the machine is loaded shows here.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/edges/test_wecom.py::test_the_production_server_records_concurrent_messages_once_each"
DB = "czk_soak"


def burn(stop: multiprocessing.Event) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    env = dict(os.environ, TEST_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}",
               TEST_REDIS_URL="redis://127.0.0.1:6379/9")
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    passed = 0
    try:
        for n in range(1, args.runs + 1):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", TEST],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            ok = proc.returncode == 0
            passed += ok
            print(f"run {n:2}: {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s", flush=True)
            if not ok:
                print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
    finally:
        stop.set()
        for b in burners:
            b.join(5)
    print(f"{passed} of {args.runs} runs passed with {args.burners} busy processes loading the CPU")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
