"""Real processes for the outside tests: our gunicorn, a private redis-server, a private PostgreSQL
cluster. Each is started in its own session (process group) on a free loopback port and stopped,
on the way out, by its own pid only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import requests

from core.config import ROOT


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, what: str, every: float = 0.05) -> None:  # noqa: ANN001
    """Poll `condition` until it is true; fail saying `what` did not happen within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Stop a process group we started: `sig`, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def product_env(**values: str | None) -> dict[str, str]:
    """This environment without our own variables, plus `values` (None leaves one out)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WECOM_", "MP_", "REDIS_", "DATABASE_", "TEST_"))}
    env.update({k: v for k, v in values.items() if v is not None})
    return env


@dataclass
class Gunicorn:
    """`gunicorn 'bot:create_app()'` from the repository root, as production runs it."""

    proc: subprocess.Popen
    base: str
    log: Path

    def workers(self) -> list[int]:
        """The pids of the master's live worker processes."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def healthy(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:  # refused, or a worker still booting on a loaded machine
        return False


@contextmanager
def gunicorn(env: dict[str, str], logdir: Path, workers: int = 2) -> Iterator[Gunicorn]:
    """Our web as in production (gunicorn.conf.py: gevent) on a free port, until the block ends."""
    port = free_port()
    log = logdir / f"gunicorn-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", str(workers),
                                 "--bind", f"127.0.0.1:{port}", "bot:create_app()"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Gunicorn(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: proc.poll() is not None or healthy(server.base), 60, "gunicorn answering /healthz")
        assert proc.poll() is None, log.read_text()
        yield server
    finally:
        stop(proc)


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A private redis-server (nothing on disk) on a free port; yields it and its URL."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 20, "redis-server answering")
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc, signal.SIGKILL)


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl), if installed."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A private PostgreSQL cluster (initdb) in a temporary directory on a free port.

    As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        assert bindir is not None, "PostgreSQL's initdb is not installed"
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="czk-pg-"))
        self.data = self.dir / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bindir / program), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as a crash would, without a checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)
