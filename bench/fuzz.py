"""Hostile input at volume, against the production server: 10,000 generated messages.

    .venv/bin/python bench/fuzz.py [--messages 10000] [--concurrency 8] [--workers 2]

Needs PostgreSQL and Redis on 127.0.0.1 (ports 5432, 6379). In one run it
1. creates a fresh database (`czk_fuzz`, or FUZZ_DB), migrates it with `python -m bot db upgrade`
   and loads the small college of the tests (every role, a few students);
2. flushes one Redis db index (14 unless FUZZ_REDIS_DB says otherwise);
3. starts our service as in production (`gunicorn 'bot:create_app()'` with gunicorn.conf.py: gevent);
4. generates distinct hostile messages with the fuzz test's hypothesis strategies (tests/fakes/hostile.py:
   mutated commands, emoji, zero-width and control characters, `]]>` and `&`, 2,000-character lines,
   200-line messages, 1e309, NaN, full-width digits) and posts them, encrypted as WeCom does, from
   N concurrent senders;
5. prints messages, 5xx, 4xx, error apologies, p50/p99/max latency and the partial writes found:
   a message whose score entries (by its MsgId) or undone entries differ from what its reply says;
   and PASS or FAIL against the targets: 0 × 5xx, 0 × 4xx, every answer within 5 s, no partial write.

The server is stopped and the database dropped at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import redis
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.college import drop_database, recreate_database  # noqa: E402
from models.catalogue import load_catalogue  # noqa: E402
from models.schema import AuditLog, PlanTask, ProcessedMessage, ScoreEntry, Staff  # noqa: E402
from tests.edges.test_fuzz import ERROR_APOLOGY, RECORDED, SENDERS, UNDONE, text_xml  # noqa: E402
from tests.edges.test_wecom import AES_KEY, AGENT_ID, CORP_ID, TOKEN, WeComSender, new_msg_id  # noqa: E402
from tests.fakes.factories import small_college  # noqa: E402
from tests.fakes.hostile import Vocabulary, chat  # noqa: E402
from tests.fakes.processes import gunicorn, product_env  # noqa: E402

HOST = "127.0.0.1"
PG_ADMIN = os.environ.get("FUZZ_PG_ADMIN", f"host={HOST} port=5432 user=postgres dbname=postgres")
PG_BASE = os.environ.get("FUZZ_PG_URL", f"postgresql+psycopg://postgres@{HOST}:5432")
DB_NAME = os.environ.get("FUZZ_DB", "czk_fuzz")
REDIS_DB = int(os.environ.get("FUZZ_REDIS_DB", "14"))
WECHAT_TIMEOUT_S = 5.0


def fresh_database() -> str:
    recreate_database(PG_ADMIN, DB_NAME)
    return f"{PG_BASE}/{DB_NAME}"


def load_college(url: str) -> Vocabulary:
    """The tests' small college and two plan tasks; the vocabulary of the generated chat."""
    subprocess.run([sys.executable, "-m", "bot", "db", "upgrade"], cwd=ROOT, check=True,
                   env=product_env(DATABASE_URL=url, SECRET_KEY="bench"), capture_output=True)
    engine = create_engine(url)
    with Session(engine) as session:
        small_college(session)
        staff = {s.wecom_userid: s for s in session.scalars(select(Staff))}
        for code in ("1.1", "1.2"):
            session.add(PlanTask(code=code, title=f"任务{code}", level="系部", owner_id=staff["wangfang"].id,
                                 supervisor_id=staff["wujun"].id, due=date(2026, 12, 31), cycle=2026))
        session.commit()
        vocab = Vocabulary.load(session, load_catalogue(ROOT / "models" / "catalogue.toml"))
    engine.dispose()
    return vocab


def generate(vocab: Vocabulary, count: int) -> list[tuple[str, str]]:
    """`count` distinct (sender, text) messages, the same ones on every run."""
    found: dict[tuple[str, str], None] = {}
    for round_seed in range(1000):
        @seed(20251119 + round_seed)
        @settings(max_examples=count * 3 // 2, deadline=None, database=None, phases=(Phase.generate,),
                  suppress_health_check=list(HealthCheck))
        @given(chat(vocab, SENDERS))
        def collect(message: tuple[str, str]) -> None:
            if len(found) < count:
                found[message] = None

        collect()
        if len(found) >= count:
            break
    return list(found)


@dataclass
class Outcome:
    msg_id: str
    status: int | None  # None: no HTTP answer (timeout, connection error)
    seconds: float
    recorded: int = 0
    undone: int = 0
    apology: bool = False
    undecryptable: bool = False


def send(wecom: WeComSender, sender: str, content: str) -> Outcome:
    msg_id = new_msg_id()
    params, body = wecom.envelope(wecom.encrypt(text_xml(sender, content, msg_id)))
    started = time.monotonic()
    try:
        resp = requests.post(wecom.url, params=params, data=body, timeout=30, headers={"Content-Type": "text/xml"})
    except requests.RequestException:
        return Outcome(msg_id, None, time.monotonic() - started)
    outcome = Outcome(msg_id, resp.status_code, time.monotonic() - started)
    if resp.status_code == 200:
        try:
            reply = wecom.reply_text(resp)
        except Exception:  # noqa: BLE001 - any failure to open the reply is what we count
            outcome.undecryptable = True
            return outcome
        recorded, undone = RECORDED.search(reply), UNDONE.search(reply)
        outcome.recorded = int(recorded.group(1)) if recorded else 0
        outcome.undone = int(undone.group(1)) if undone else 0
        outcome.apology = ERROR_APOLOGY in reply
    return outcome


def partial_writes(url: str, outcomes: list[Outcome]) -> tuple[int, int, int]:
    """(messages whose writes differ from their reply, processed rows, distinct processed keys)."""
    engine = create_engine(url)
    with Session(engine) as session:
        entries = dict(session.execute(
            select(ScoreEntry.source_msg, func.count()).group_by(ScoreEntry.source_msg)).all())
        undone = dict(session.execute(
            select(AuditLog.source_msg, func.count()).where(AuditLog.action == "revoke")
            .group_by(AuditLog.source_msg)).all())
        processed = session.scalar(select(func.count()).select_from(ProcessedMessage))
        distinct = session.scalar(select(func.count(func.distinct(ProcessedMessage.msg_key))))
    engine.dispose()
    wrong = sum(1 for o in outcomes
                if entries.get(o.msg_id, 0) != o.recorded or undone.get(o.msg_id, 0) != o.undone)
    strays = set(entries) - {o.msg_id for o in outcomes}  # entries no message of ours announced
    return wrong + len(strays), processed, distinct


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    url = fresh_database()
    redis.Redis(host=HOST, port=6379, db=REDIS_DB).flushdb()
    try:
        vocab = load_college(url)
        started = time.monotonic()
        messages = generate(vocab, args.messages)
        print(f"generated {len(messages)} distinct messages in {time.monotonic() - started:.0f} s")
        shapes = {
            "2,000-character lines": sum(any(len(line) >= 1900 for line in t.splitlines()) for _, t in messages),
            "200-line messages": sum(len(t.splitlines()) >= 200 for _, t in messages),
            "control characters": sum(bool(re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", t)) for _, t in messages),
            "]]> or &": sum("]]>" in t or "&" in t for _, t in messages),
        }
        print("  with " + ", ".join(f"{n} {what}" for what, n in shapes.items()))
        env = product_env(DATABASE_URL=url, REDIS_URL=f"redis://{HOST}:6379/{REDIS_DB}", SECRET_KEY="bench",
                          APP_ENV="production", WECOM_CORP_ID=CORP_ID, WECOM_AGENT_ID=AGENT_ID,
                          WECOM_SECRET="secret", WECOM_TOKEN=TOKEN, WECOM_AES_KEY=AES_KEY,
                          WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/")
        with tempfile.TemporaryDirectory(prefix="czk-fuzz-") as logdir, \
                gunicorn(env, Path(logdir), workers=args.workers) as server:
            wecom = WeComSender(server.base)
            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                outcomes = list(pool.map(lambda m: send(wecom, *m), messages))
            elapsed = time.monotonic() - started
            tracebacks = server.log.read_text(errors="replace").count("Traceback")
        wrong, processed, distinct = partial_writes(url, outcomes)
    finally:
        drop_database(PG_ADMIN, DB_NAME)

    seconds = [o.seconds for o in outcomes]
    server_errors = sum(1 for o in outcomes if o.status is not None and o.status >= 500)
    client_errors = sum(1 for o in outcomes if o.status is not None and 400 <= o.status < 500)
    no_answer = sum(1 for o in outcomes if o.status is None)
    apologies = sum(o.apology for o in outcomes)
    undecryptable = sum(o.undecryptable for o in outcomes)
    slow = sum(s >= WECHAT_TIMEOUT_S for s in seconds)
    print(f"messages           {len(outcomes)} in {elapsed:.0f} s ({len(outcomes) / elapsed:.0f}/s, "
          f"{args.concurrency} concurrent senders, {args.workers} gunicorn workers)")
    print(f"5xx                {server_errors}")
    print(f"4xx                {client_errors}")
    print(f"no answer          {no_answer}")
    print(f"undecryptable      {undecryptable}")
    print(f"error apologies    {apologies}")
    p50, p99 = percentile(seconds, 50) * 1000, percentile(seconds, 99) * 1000
    print(f"latency            p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(seconds) * 1000:.0f} ms; "
          f"{slow} over {WECHAT_TIMEOUT_S:.0f} s")
    slowest = max(range(len(outcomes)), key=lambda i: seconds[i])
    lines = messages[slowest][1].splitlines()
    print(f"slowest            {len(lines)} lines, {sum(map(len, lines))} characters, from {messages[slowest][0]}")
    print(f"recorded           {sum(o.recorded for o in outcomes)} entries by {sum(o.recorded > 0 for o in outcomes)} "
          f"messages, {sum(o.undone for o in outcomes)} undone")
    print(f"partial writes     {wrong}")
    print(f"processed rows     {processed} ({distinct} distinct keys) for {len(outcomes)} messages")
    print(f"server tracebacks  {tracebacks}")
    ok = (server_errors == 0 and client_errors == 0 and no_answer == 0 and undecryptable == 0 and apologies == 0
          and slow == 0 and wrong == 0 and processed == distinct == len(outcomes))
    print("PASS" if ok else "FAIL", "(targets: 0 × 5xx, 0 × 4xx, every answer within 5 s, no partial write)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
