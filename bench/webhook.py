"""Benchmark of the WeCom callback: our service against a bare verify-decrypt-echo endpoint.

    .venv/bin/python bench/webhook.py [--duration 20] [--concurrency 50] [--rate 50] …

Needs PostgreSQL and Redis on 127.0.0.1 (ports 5432, 6379). In one run it
1. creates a fresh database (`czk_bench`, or `--db`), migrates it with `python -m bot db upgrade`
   and loads a roster of many senders (200 班主任, each with a class of 40 students);
2. flushes one Redis db index (13 unless BENCH_REDIS_DB says otherwise);
3. starts our service as in production (`gunicorn -w 2 'bot:create_app()'` with gunicorn.conf.py:
   gevent), the bare endpoint (`gunicorn -w 2 -k sync 'bench.bare_app:create_bare_app()'`) and,
   as a reference, the bare endpoint plus one durable INSERT per message (`create_floor_app()`,
   closed loop only) on loopback ports;
4. phase 1, closed loop: N concurrent senders post encrypted recordings
   ("全勤率 <学生> <值>", each a distinct MsgId) as fast as answers come back, the servers
   taking turns in rounds (ours, bare, floor, floor, bare, ours, …) so that a machine whose
   speed drifts during the run weighs on each alike;
   phase 2, open loop: a fixed offered rate with scheduled send times, latency
   measured from the scheduled time (no coordinated omission);
5. prints msgs/s, p50, p99, max and errors per server and phase, the ratio
   ours/bare, whether the targets hold, and checks that every reply of ours
   decrypts and says 已记录 and that score_entry holds exactly one row per message.

The servers are stopped at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import itertools
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import xmltodict
from sqlalchemy import create_engine, func, insert, select, text
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.schema import Department, ProcessedMessage, SchoolClass, ScoreEntry, Staff, Student  # noqa: E402

HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", f"host={HOST} port=5432 user=postgres dbname=postgres")
PG_BASE = os.environ.get("BENCH_PG_URL", f"postgresql+psycopg://postgres@{HOST}:5432")
DB_NAME = "czk_bench"
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
CORP_ID = "wwbench0000000001"
TOKEN = "benchToken"
AES_KEY = base64.b64encode(hashlib.sha256(b"czk-bench").digest()).decode().rstrip("=")
AGENT_ID = "1000002"
PATH = "/wechat/wecom"
REQUEST_TIMEOUT_S = 10.0
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超", "霞", "平",
         "刚", "桂英", "子涵", "雨轩", "浩然", "思远", "梓萱", "一诺", "欣怡", "宇航", "晨曦", "嘉怡"]


# ── setup ────────────────────────────────────────────────────────────────────

def reachable(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fresh_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{PG_BASE}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Sender:
    userid: str
    students: list[str]  # names, unique within the class


def class_names(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add(rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if len(names) % 3 == 0 else ""))
    return sorted(names)


def load_roster(url: str, teachers: int, per_class: int) -> list[Sender]:
    """Departments, one 班主任 per class, a class of students each: inserted directly."""
    rng = random.Random(20251119)
    engine = create_engine(url)
    senders: list[Sender] = []
    with engine.begin() as conn:
        conn.execute(insert(Department), [{"name": f"系部{d}"} for d in range(5)])
        dept_ids = list(conn.scalars(select(Department.id).order_by(Department.id)))
        conn.execute(insert(Staff), [
            {"staff_no": f"B{i:04d}", "name": f"教师{i:03d}", "roles": "班主任",
             "department_id": dept_ids[i % len(dept_ids)], "wecom_userid": f"bzr{i:03d}"}
            for i in range(teachers)])
        staff_ids = dict(conn.execute(select(Staff.staff_no, Staff.id)).all())
        conn.execute(insert(SchoolClass), [
            {"code": f"BJ{i:03d}", "name": f"测试{i:03d}班", "department_id": dept_ids[i % len(dept_ids)],
             "grade": 2024, "head_teacher_id": staff_ids[f"B{i:04d}"]}
            for i in range(teachers)])
        class_ids = dict(conn.execute(select(SchoolClass.code, SchoolClass.id)).all())
        rows = []
        for i in range(teachers):
            names = class_names(rng, per_class)
            senders.append(Sender(f"bzr{i:03d}", names))
            rows += [{"student_no": f"2024{i:03d}{j:02d}", "name": name, "class_id": class_ids[f"BJ{i:03d}"],
                      "wecom_userid": f"s2024{i:03d}{j:02d}", "weekly_card": True}
                     for j, name in enumerate(names)]
        conn.execute(insert(Student), rows)
    engine.dispose()
    return senders


# ── servers ──────────────────────────────────────────────────────────────────

class Server:
    """A gunicorn process group we started, stopped by its own id."""

    def __init__(self, name: str, app_spec: str, env: dict[str, str], logdir: Path, workers: int,
                 options: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"{HOST}:{self.port}",
             "--graceful-timeout", "5", *options, app_spec],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")

    def workers(self) -> list[int]:
        """The worker pids (children of the gunicorn master)."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the workers."""
        total = 0
        for pid in self.workers():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()


# ── the client: WeCom's side of the wire ─────────────────────────────────────

_msg_ids = itertools.count(int(time.time()) * 1000)
_id_lock = threading.Lock()


def next_msg_id() -> str:
    with _id_lock:
        return str(next(_msg_ids))


class WeComClient:
    """One keep-alive connection (re-opened when the server closes it), posting encrypted callbacks."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.prp = PrpCrypto(base64.b64decode(AES_KEY + "="))
        self.conn: http.client.HTTPConnection | None = None

    def envelope(self, sender: str, content: str) -> tuple[str, bytes]:
        inner = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{sender}]]>"
                 f"</FromUserName><CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                 f"<Content><![CDATA[{content}]]></Content><MsgId>{next_msg_id()}</MsgId>"
                 f"<AgentID>{AGENT_ID}</AgentID></xml>")
        encrypt = self.prp.encrypt(inner, CORP_ID).decode()
        timestamp, nonce = str(int(time.time())), uuid.uuid4().hex[:10]
        sig = hashlib.sha1("".join(sorted([TOKEN, timestamp, nonce, encrypt])).encode()).hexdigest()
        body = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
                f"<AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>").encode()
        return f"{PATH}?msg_signature={sig}&timestamp={timestamp}&nonce={nonce}", body

    def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.request("POST", url, body, {"Content-Type": "text/xml"})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.conn.close()
                    self.conn = None
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                # A keep-alive connection the server closed between requests: reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@dataclass
class Sample:
    sender: str
    content: str
    status: int
    body: bytes
    latency: float  # seconds


@dataclass
class Result:
    server: str
    phase: str
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0  # no answer at all (timeout, reset)
    elapsed: float = 0.0
    late_starts: float = 0.0  # open loop: the largest delay between a scheduled time and the actual send

    def latencies(self) -> list[float]:
        return sorted(s.latency for s in self.samples)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


class Traffic:
    """Recording messages from many distinct senders, each naming a student of the sender's class."""

    def __init__(self, senders: list[Sender]) -> None:
        self.senders = senders
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> tuple[str, str]:
        with self._lock:
            k = next(self._turn)
        sender = self.senders[k % len(self.senders)]
        student = sender.students[(k // len(self.senders)) % len(sender.students)]
        return sender.userid, f"全勤率 {student} {80 + k % 21}"


def one(client: WeComClient, traffic: Traffic, scheduled: float | None = None) -> Sample | None:
    sender, content = traffic.next()
    url, body = client.envelope(sender, content)
    start = time.perf_counter() if scheduled is None else scheduled
    try:
        status, data = client.post(url, body)
    except OSError:
        return None
    return Sample(sender, content, status, data, time.perf_counter() - start)


def start_profilers(server: Server, duration: float, outdir: Path) -> list[subprocess.Popen]:
    """py-spy on each worker for the closed loop: collapsed stacks, one file per worker."""
    spy = shutil.which("py-spy") or os.environ.get("PY_SPY")
    if not spy:
        print("  (py-spy not found on PATH or in PY_SPY: not profiling)", flush=True)
        return []
    procs = []
    for pid in server.workers():
        out = outdir / f"{server.name}-{pid}.txt"
        procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(duration)),
                                       "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"  profiling {server.name} worker {pid} → {out}", flush=True)
    return procs


def closed_loop(server: Server, traffic: Traffic, concurrency: int, duration: float) -> Result:
    result = Result(server.name, "closed")
    lock = threading.Lock()
    begin = time.perf_counter()
    deadline = begin + duration

    def run() -> None:
        client = WeComClient(server.port)
        while time.perf_counter() < deadline:
            sample = one(client, traffic)
            with lock:
                if sample is None:
                    result.failures += 1
                else:
                    result.samples.append(sample)

    run_threads(run, concurrency, duration + REQUEST_TIMEOUT_S * 3)
    result.elapsed = time.perf_counter() - begin
    return result


def run_threads(target, count: int, timeout: float) -> None:
    """Start `count` threads running `target` and wait for them (each at most `timeout`)."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def open_loop(server: Server, traffic: Traffic, rate: float, duration: float, pool: int = 64) -> Result:
    result = Result(server.name, "open")
    total = int(rate * duration)
    lock = threading.Lock()
    slots = iter(range(total))
    begin = time.perf_counter() + 0.2

    def run() -> None:
        client = WeComClient(server.port)
        while True:
            with lock:
                k = next(slots, None)
            if k is None:
                return
            scheduled = begin + k / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            late = time.perf_counter() - scheduled
            sample = one(client, traffic, scheduled)
            with lock:
                result.late_starts = max(result.late_starts, late)
                if sample is None:
                    result.failures += 1
                else:
                    result.samples.append(sample)

    run_threads(run, pool, duration + REQUEST_TIMEOUT_S * 3)
    result.elapsed = time.perf_counter() - begin
    return result


# ── checking and reporting ───────────────────────────────────────────────────

_crypto = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)


def reply_content(body: bytes) -> str | None:
    """The decrypted Content of a passive reply, or None if it does not decrypt."""
    try:
        outer = xmltodict.parse(body)["xml"]
        inner = _crypto.decrypt_message(body.decode(), outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
        return xmltodict.parse(inner)["xml"]["Content"]
    except Exception:  # noqa: BLE001 - any failure to open the reply is counted, not raised
        return None


def bad_replies(result: Result, ours: bool) -> int:
    """Non-200 answers, and replies that do not decrypt or do not say what they should."""
    bad = 0
    for s in result.samples:
        content = reply_content(s.body) if s.status == 200 else None
        if content is None:
            bad += 1
        elif ours and "已记录 1 条" not in content:
            bad += 1
        elif not ours and content != s.content:
            bad += 1
    return bad


def line(result: Result, errors: int) -> str:
    lat = result.latencies()
    rate = len(result.samples) / result.elapsed if result.elapsed else 0.0
    return (f"  {result.server:<5} {result.phase:<6} n={len(result.samples):>6}  {rate:8.1f} msgs/s  "
            f"p50 {percentile(lat, 0.50) * 1000:7.1f} ms  p99 {percentile(lat, 0.99) * 1000:7.1f} ms  "
            f"max {(lat[-1] if lat else math.nan) * 1000:7.1f} ms  errors {errors + result.failures}")


def throughput(result: Result) -> float:
    return len(result.samples) / result.elapsed if result.elapsed else 0.0


def warm_up(server: Server, traffic: Traffic, n: int = 40) -> Result:
    result = Result(server.name, "warmup")
    client = WeComClient(server.port)
    for _ in range(n):
        sample = one(client, traffic)
        if sample is None:
            result.failures += 1
        else:
            result.samples.append(sample)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="closed-loop seconds per server")
    parser.add_argument("--rounds", type=int, default=4,
                        help="closed loop: the servers take turns, each round a share of --duration")
    parser.add_argument("--concurrency", type=int, default=50, help="closed-loop concurrent senders")
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop offered messages per second")
    parser.add_argument("--open-duration", type=float, default=20.0, help="open-loop seconds per server")
    parser.add_argument("--teachers", type=int, default=200, help="senders (班主任), one class each")
    parser.add_argument("--students", type=int, default=40, help="students per class")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server")
    parser.add_argument("--worker-class", choices=("gevent", "gthread"),
                        help="gunicorn worker class of ours (default: gunicorn.conf.py's, as in production)")
    parser.add_argument("--connections", type=int,
                        help="gevent: clients served at once per worker of ours (default: gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, default=8, help="with --worker-class gthread: threads per worker")
    parser.add_argument("--bare-class", default="sync", choices=("sync", "gevent", "gthread"),
                        help="gunicorn worker class of bare and floor")
    parser.add_argument("--bare-threads", type=int, default=8, help="with --bare-class gthread: threads per worker")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles of our workers during the closed loop into DIR")
    parser.add_argument("--db", default=DB_NAME, help="the database created (and dropped) for the run")
    parser.add_argument("--keep-db", action="store_true", help="leave the database for inspection")
    args = parser.parse_args()

    if not (reachable(5432) and reachable(6379)):
        print("PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are needed.", file=sys.stderr)
        return 2

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    logdir = Path(tempfile.mkdtemp(prefix="czk-bench-"))
    servers: list[Server] = []
    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run "
              "(other work on the machine skews every figure)", flush=True)
        print(f"setting up: database {args.db}, Redis db {REDIS_DB}, "
              f"{args.teachers} senders × {args.students} students, logs in {logdir}", flush=True)
        db_url = fresh_database(args.db)
        redis_url = f"redis://{HOST}:6379/{REDIS_DB}"
        redis.Redis.from_url(redis_url).flushdb()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WECOM_", "MP_"))}
        env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, SECRET_KEY="bench", APP_ENV="production",
                   WECOM_CORP_ID=CORP_ID, WECOM_AGENT_ID=AGENT_ID, WECOM_SECRET="bench-secret",
                   WECOM_TOKEN=TOKEN, WECOM_AES_KEY=AES_KEY, WECOM_API_BASE=f"http://{HOST}:1/cgi-bin/",
                   PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "bot", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        senders = load_roster(db_url, args.teachers, args.students)
        traffic = Traffic(senders)

        ours_options: tuple[str, ...] = ()  # gunicorn.conf.py's (gevent), but for the workers
        if args.worker_class:
            ours_options = ("-k", args.worker_class)
        if args.connections:
            ours_options += ("--worker-connections", str(args.connections))
        if args.worker_class == "gthread":
            ours_options += ("--threads", str(args.threads))
        ours = Server("ours", "bot:create_app()", env, logdir, args.workers, ours_options)
        servers.append(ours)
        bare_options = ("-k", args.bare_class)
        if args.bare_class == "gthread":
            bare_options += ("--threads", str(args.bare_threads))
        bare = Server("bare", "bench.bare_app:create_bare_app()", env, logdir, args.workers, bare_options)
        servers.append(bare)
        # A reference for the ratio: the bare endpoint plus one durable INSERT per message.
        floor = Server("floor", "bench.bare_app:create_floor_app()", env, logdir, args.workers, bare_options)
        servers.append(floor)
        for s in servers:
            s.wait_ready()

        results: list[tuple[Result, int]] = []
        sent_to_ours = 0
        for s in servers:
            warm = warm_up(s, traffic)
            if s is ours:
                sent_to_ours += len(warm.samples) + warm.failures
            results.append((warm, bad_replies(warm, s is ours)))
        # The database is minutes old: give the planner the statistics autovacuum keeps on a live one
        # (prepared statements are planned again after it), so a plan made on empty tables does not stay.
        with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute("ANALYZE")
        rounds = max(1, args.rounds)
        print(f"phase 1: closed loop, {args.concurrency} concurrent senders, {args.duration:g} s per server "
              f"in {rounds} rounds", flush=True)
        closed = {s.name: Result(s.name, "closed") for s in servers}
        cpu_s = dict.fromkeys(closed, 0.0)
        for k in range(rounds):
            # ours, bare, floor, then floor, bare, ours, …: a machine that speeds up or slows down
            # during the run weighs on every server alike.
            for s in servers if k % 2 == 0 else servers[::-1]:
                spies = []
                if args.profile and s is ours and k == 0:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    spies = start_profilers(s, args.duration / rounds, args.profile)
                cpu_before = s.cpu_seconds()
                part = closed_loop(s, traffic, args.concurrency, args.duration / rounds)
                cpu_s[s.name] += s.cpu_seconds() - cpu_before
                closed[s.name].samples += part.samples
                closed[s.name].failures += part.failures
                closed[s.name].elapsed += part.elapsed
                for spy in spies:
                    spy.wait(30)
        cpu_ms = {name: 1000 * cpu_s[name] / max(1, len(closed[name].samples)) for name in closed}
        print(f"phase 2: open loop, {args.rate:g} msgs/s offered for {args.open_duration:g} s per server",
              flush=True)
        opened = {}
        for s in (ours, bare):
            opened[s.name] = open_loop(s, traffic, args.rate, args.open_duration)

        print("\nresults (latency from send, or from the scheduled time in the open loop):")
        for phase in (closed, opened):
            for name in phase:
                r = phase[name]
                errors = bad_replies(r, name == "ours")
                results.append((r, errors))
                print(line(r, errors))
                if name == "ours":
                    sent_to_ours += len(r.samples) + r.failures
        ratio = throughput(closed["ours"]) / throughput(closed["bare"]) if throughput(closed["bare"]) else 0.0
        ours_closed_max = max((s.latency for s in closed["ours"].samples), default=math.inf)
        ours_open_p99 = percentile(opened["ours"].latencies(), 0.99)
        floor_ratio = throughput(closed["floor"]) / throughput(closed["bare"]) if throughput(closed["bare"]) else 0.0
        print(f"\n  throughput ratio ours/bare (closed loop): {ratio:.2f}")
        print(f"  for reference, bare + one durable INSERT per message (floor): {floor_ratio:.2f} × bare; "
              f"ours = {ratio / floor_ratio if floor_ratio else 0.0:.2f} × floor")
        print(f"  worker CPU per message (closed loop; steadier than msgs/s on a shared machine): "
              f"ours {cpu_ms['ours']:.2f} ms, bare {cpu_ms['bare']:.2f} ms, floor {cpu_ms['floor']:.2f} ms, "
              f"ratio bare/ours {cpu_ms['bare'] / cpu_ms['ours']:.2f}")
        print(f"  open loop: latest send start behind schedule: ours {opened['ours'].late_starts * 1000:.1f} ms, "
              f"bare {opened['bare'].late_starts * 1000:.1f} ms")

        engine = create_engine(db_url)
        with engine.connect() as conn:
            entries = conn.scalar(select(func.count()).select_from(ScoreEntry))
            processed = conn.scalar(select(func.count()).select_from(ProcessedMessage))
            doubled = conn.scalar(text(
                "SELECT count(*) FROM (SELECT source_msg FROM score_entry GROUP BY source_msg "
                "HAVING count(*) > 1) d"))
        engine.dispose()
        ours_samples = [s for r, _ in results if r.server == "ours" for s in r.samples]
        recorded = sum(1 for s in ours_samples if s.status == 200 and "已记录 1 条" in (reply_content(s.body) or ""))
        ours_errors = sum(e + r.failures for r, e in results if r.server == "ours")
        print(f"\n  messages sent to ours: {sent_to_ours}; replies that decrypt and say 已记录: {recorded}; "
              f"errors: {ours_errors}")
        print(f"  score_entry rows: {entries}; processed_message rows: {processed}; "
              f"messages with more than one entry: {doubled}")

        checks = [
            ("closed loop: ours ≥ 0.5 × bare throughput", ratio >= 0.5),
            ("closed loop: ours ≥ 0.9 × the floor's throughput", floor_ratio > 0 and ratio >= 0.9 * floor_ratio),
            ("closed loop: every reply of ours < 5 s", ours_closed_max < 5.0 and closed["ours"].failures == 0),
            ("open loop: ours p99 < 100 ms", ours_open_p99 < 0.100),
            ("every reply of ours decrypts and says 已记录", recorded == sent_to_ours and ours_errors == 0),
            ("score_entry rows = messages (nothing lost, nothing doubled)",
             entries == sent_to_ours == processed and doubled == 0),
        ]
        print(f"  load average after the run: {os.getloadavg()[0]:.2f}")
        print("\ntargets:")
        for label, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
        return 0 if all(ok for _, ok in checks) else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        return 130
    finally:
        for s in servers:
            s.stop()
        if not args.keep_db:
            try:
                drop_database(args.db)
            except psycopg.Error as exc:
                print(f"could not drop {args.db}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
