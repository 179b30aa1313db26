"""The tier that runs each documented command as a process, as a user types it.

Every module gets its own fresh database: an SQLite file, or — when TEST_DATABASE_URL is a
PostgreSQL URL — a database of its own on that server (created here, dropped afterwards), so these
processes never touch the database the in-process fixtures share. TEST_REDIS_URL, when set, is the
processes' REDIS_URL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from core.config import ROOT

# Variables a test must not inherit from the shell that runs pytest: each process gets exactly
# the configuration its test gives it.
FOREIGN = ("WECOM_", "MP_", "REDIS_", "DATABASE_", "APP_", "FLASK_", "CATALOGUE_PATH", "RISK_RULES_PATH")


@pytest.fixture(scope="module")
def fresh_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an empty database of this module's own."""
    base = os.environ.get("TEST_DATABASE_URL")
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    if not base or not base.startswith("postgresql"):
        yield f"sqlite:///{tmp_path_factory.mktemp(module) / 'college.db'}"
        return
    url = make_url(base)
    name = f"{url.database}_out_{module}"[:63]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # left by a killed run
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def db(fresh_db: str) -> Iterator[Engine]:
    """An engine on the module's database, to look at what the processes left there."""
    engine = create_engine(fresh_db)
    yield engine
    engine.dispose()


class ProcessEnv(dict):
    """A process's environment; shown in a failure report by what the test set, not by the whole shell's."""

    def __repr__(self) -> str:
        return f"ProcessEnv(DATABASE_URL={self.get('DATABASE_URL')!r}, REDIS_URL={self.get('REDIS_URL')!r})"


def bot_env(db_url: str, **extra: str) -> ProcessEnv:
    """The environment of a process: the shell's, minus our configuration, plus the test's."""
    env = ProcessEnv((k, v) for k, v in os.environ.items() if not k.startswith(FOREIGN))
    env.update(DATABASE_URL=db_url, SECRET_KEY="test", PYTHONUNBUFFERED="1")
    if os.environ.get("TEST_REDIS_URL"):
        env["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    env.update(extra)
    return env


def bot(env: ProcessEnv, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` from the repository root, to its end."""
    return subprocess.run([sys.executable, "-m", "bot", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=180)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert done.returncode == 0, (done.args, done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


@dataclass
class Server:
    """A web process we started: its base URL, the process, and its log."""

    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int, group: bool = False) -> int:
        """Send `sig` (to the process, or to its whole group as a terminal's Ctrl-C does); its exit code."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after signal {sig}:\n{self.output()}")


@contextmanager
def web_process(argv: list[str], env: ProcessEnv, port: int, log: Path) -> Iterator[Server]:
    """Start a web process in a session of its own; yield once /healthz answers; on the way out kill its
    process group (only what it started) if it is still there."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 90  # a bound on start-up, not a timing check
        while True:
            assert proc.poll() is None, f"exited {proc.returncode}:\n{server.output()}"
            try:
                if requests.get(server.base + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no answer on {server.base}:\n{server.output()}"
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        else:  # gunicorn's workers may outlive a master that died: clean up the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
