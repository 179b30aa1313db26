"""College-scale benchmark: the weekly digest, the daily risk scan and card queries on PostgreSQL.

    .venv/bin/python bench/college.py [--students 15000] [--staff 600] [--weeks 18] [--keep-db]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres). In one process it
1. creates a fresh database (`czk_college`, or --db), migrates it (bot.cli.db.upgrade_database)
   and generates a college with COPY: departments, classes of 40, students, staff with roles,
   teaching assignments, a semester of score entries (each week 5–6 observed class sessions
   of 准时率 / 预习完成率 / 作业完成率, 全勤率 and 宿舍得分; monthly 满勤率; a few counts; the
   学年初 and 第一学期中 documents; the class's 满勤率): about 5 million rows for 15,000
   students and 18 weeks; one RecordingBatch per recording; some warnings and plan tasks.
   Recordings are written in the order they were made, so ids grow with created_at: each made
   on or after its day, some the next Monday to Wednesday as `上周` (dated Sunday, some before
   the digest runs on the last Monday), some corrected later (a newer 全勤率 for a few students),
   1 % of class sessions recorded wrongly and undone (撤销) five minutes later;
2. measures, as of Monday 07:50 after the last week:
   - the raw digest aggregate (per class and point, the means of the last two weeks) and the
     digest for every recipient (models/digest: build once, slice; scheduler/notify/digest: render;
     not delivered):
     without a state (cold, for reference), then, after last week's digest has left its state
     (untimed), this week's (the weekly run the target is for);
   - the raw scan aggregate (per student, the rule points over each rule's window, the
     windows from models/risk/risk_rules.toml) and the daily risk scan (models.risk.scan, rolled back);
   - 1,000 card queries (models.cards.student_card for random students): p50 and p99;
   - the pages (bench/college_pages.py), on the Wednesday: 300 chat cards (储值卡 <学号> through
     the pipeline) and card pages (/h5/card/<学号>) for the same students and viewers, p50 and p99;
     the card page's weight with its assets (gzip); the dashboard's first view in a process and
     its later views, from the digest's stored state;
   - the peak RSS of the process;
3. prints each figure, its ratio to its raw aggregate and PASS/FAIL per target
   (digest and scan ≤ 3 × raw, 本周概况 ≤ 1 s from the stored state, card p99 ≤ 20 ms,
   peak RSS ≤ 300 MB; card page p99 ≤ 50 ms and ≤ 3 × the chat card's, card page with its assets
   ≤ 150 KB gzip, dashboard ≤ 1 s);
4. drops the database unless --keep-db.

Generation streams rows to COPY week by week, so memory stays flat whatever the size.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
NULL = "\\N"  # COPY's NULL
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bot.cli.db import upgrade_database  # noqa: E402
from models.catalogue import load_catalogue  # noqa: E402
from models.db import make_engine, make_sessionmaker  # noqa: E402
from models.periods import week_key  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
TERM_START = date(2025, 9, 1)  # a Monday
TERM_END = date(2026, 1, 18)
YEAR, TERM_KEY = "2025-2026", "2025-2026-1"
CLASS_SIZE = 40
SESSION_POINTS = ("A02", "A05", "A06")  # 准时率, 预习完成率, 作业完成率 (每次课前)
DIGEST_AT = dtime(7, 50)  # Monday, when the weekly digest runs
TARGET_RATIO = 3.0
TARGET_CARD_P99_MS = 20.0
TARGET_RSS_MB = 300.0
TARGET_OVERVIEW_S = 1.0  # 本周概况 in a callback: WeChat waits 5 s

_PROFILES = (("good", 0.80), ("ok", 0.14), ("weak", 0.06))
_LATE = {"good": 0.02, "ok": 0.07, "weak": 0.2}
_A03 = {"good": [100] * 9 + [95], "ok": [100, 100, 95, 95, 90, 85], "weak": [95, 90, 85, 80, 75, 70, 60]}
_A06 = {"good": [100] * 8 + [80, 60], "ok": [100] * 5 + [80, 60, 0], "weak": [100, 100, 80, 60, 0, 0]}
_A05 = {"good": [100] * 6 + [80, 60, 0], "ok": [100, 100, 100, 80, 60, 0], "weak": [100, 80, 60, 0, 0]}
_B09 = {"good": (85, 98), "ok": (78, 95), "weak": (65, 90)}


def rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ── the database ─────────────────────────────────────────────────────────────

def admin_dsn(host: str, port: int, user: str) -> str:
    return f"host={host} port={port} user={user} dbname=postgres"


def recreate_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ── the college ──────────────────────────────────────────────────────────────

@dataclass
class Layout:
    """Who is who: ids are assigned here and written with COPY."""

    departments: list[str] = field(default_factory=list)
    staff: list[tuple[int, str, str, str, int | None]] = field(default_factory=list)  # id, no, name, roles, dept
    # id, code, dept, grade, head, counsellor
    classes: list[tuple[int, str, int, int, int, int]] = field(default_factory=list)
    teaching: list[tuple[int, int, str]] = field(default_factory=list)  # staff, class, course
    office: dict[int, int] = field(default_factory=dict)  # department → 学工办 staff id
    research: dict[int, int] = field(default_factory=dict)  # department → 教研室 staff id
    heads: dict[int, int] = field(default_factory=dict)  # department → 系部主任 staff id
    students: int = 0


def plan_layout(n_students: int, n_staff: int) -> Layout:
    """Departments, classes of 40, staff with roles, teaching assignments."""
    n_classes = math.ceil(n_students / CLASS_SIZE)
    n_depts = max(2, min(12, n_classes // 30))
    lay = Layout(departments=[f"第{i + 1:02d}系" for i in range(n_depts)], students=n_students)
    next_id = iter(range(1, 10**7))

    def add(roles: str, dept: int | None) -> int:
        sid = next(next_id)
        lay.staff.append((sid, f"T{sid:05d}", f"教师{sid:05d}", roles, dept))
        return sid

    for _ in range(3):
        add("院领导", None)
    add("管理员", None)
    for d in range(1, n_depts + 1):
        lay.heads[d] = add("系部主任", d)
        lay.office[d] = add("学工办", d)
        lay.research[d] = add("教研室", d)
    dept_of_class = [1 + (c * n_depts) // n_classes for c in range(n_classes)]
    counsellors: dict[int, list[int]] = {}
    for d in range(1, n_depts + 1):
        count = max(1, math.ceil(dept_of_class.count(d) / 6))
        counsellors[d] = [add("辅导员", d) for _ in range(count)]
    class_heads = [add("班主任,任课教师", dept_of_class[c]) for c in range(n_classes)]
    pe = [add("体育老师", None) for _ in range(max(1, math.ceil(n_classes / 20)))]
    teachers: dict[int, list[int]] = {d: [] for d in range(1, n_depts + 1)}
    spare = max(n_depts, n_staff - len(lay.staff))
    for i in range(spare):
        d = 1 + i % n_depts
        teachers[d].append(add("任课教师", d))
    per_dept_index: dict[int, int] = {}
    for c in range(n_classes):
        cid = c + 1
        d = dept_of_class[c]
        k = per_dept_index.get(d, 0)
        per_dept_index[d] = k + 1
        counsellor = counsellors[d][k // 6 % len(counsellors[d])]
        lay.classes.append((cid, f"C{cid:04d}", d, 2023 + c % 3, class_heads[c], counsellor))
        pool = teachers[d]
        lay.teaching.append((class_heads[c], cid, "专业课一"))
        lay.teaching.append((pool[(2 * k) % len(pool)], cid, "专业课二"))
        lay.teaching.append((pool[(2 * k + 1) % len(pool)], cid, "公共课"))
        lay.teaching.append((pe[c % len(pe)], cid, "体育"))
    return lay


def _copy(cur: psycopg.Cursor, table: str, columns: str, rows: Iterator[str]) -> int:
    """COPY text rows (tab-separated, \\N for NULL) into `table`, streamed in chunks."""
    n = 0
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        buf = io.StringIO()
        for line in rows:
            buf.write(line)
            n += 1
            if n % 50_000 == 0:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())
    return n


Row = tuple[str, int | None, int | None, str, float]  # point, student, class, period key, value


@dataclass(order=True)
class Recording:
    """One recording (a batch) as it was made: when, by whom, for which day; its rows drawn when written."""

    at: datetime
    seq: int
    recorder: int = field(compare=False)
    day: date = field(compare=False)
    rows: Callable[[], Iterator[Row]] = field(compare=False)
    revoked: datetime | None = field(default=None, compare=False)


@dataclass
class Generated:
    entries: int = 0
    batches: int = 0
    warnings: int = 0


def generate(dsn: str, lay: Layout, weeks: int, seed: int = 11) -> Generated:
    """Write the college with COPY; indexes of score_entry are rebuilt after the load."""
    rng = random.Random(seed)
    out = Generated()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # no FK triggers during the load
        cur.execute("INSERT INTO semester (year, term, start, \"end\") VALUES (%s, 1, %s, %s), (%s, 2, %s, %s)",
                    (YEAR, TERM_START, TERM_END, YEAR, date(2026, 2, 23), date(2026, 7, 10)))
        _copy(cur, "department", "id, name, head_staff_no",
              (f"{i}\t{name}\tT{lay.heads[i]:05d}\n" for i, name in enumerate(lay.departments, start=1)))
        _copy(cur, "staff", "id, staff_no, name, wecom_userid, roles, department_id",
              (f"{sid}\t{no}\t{name}\tu{no}\t{roles}\t{dept or NULL}\n"
               for sid, no, name, roles, dept in lay.staff))
        _copy(cur, "school_class", "id, code, name, department_id, grade, head_teacher_id, counsellor_id",
              (f"{cid}\t{code}\t{code}班\t{d}\t{g}\t{h}\t{c}\n" for cid, code, d, g, h, c in lay.classes))
        _copy(cur, "teaching_assignment", "id, staff_id, class_id, course",
              (f"{i}\t{s}\t{c}\t{course}\n" for i, (s, c, course) in enumerate(lay.teaching, start=1)))
        profiles: list[str] = []
        students_of: dict[int, range] = {}

        def students() -> Iterator[str]:
            sid = 0
            for cid, *_rest in lay.classes:
                size = min(CLASS_SIZE, lay.students - sid)
                students_of[cid] = range(sid + 1, sid + size + 1)
                for _ in range(size):
                    sid += 1
                    profiles.append(rng.choices([p for p, _w in _PROFILES], [w for _p, w in _PROFILES])[0])
                    yield f"{sid}\tS{sid:06d}\t学生{sid:06d}\t{cid}\tS{sid:06d}\tt\n"
        _copy(cur, "student", "id, student_no, name, class_id, wecom_userid, weekly_card", students())

        cur.execute("SELECT indexdef, indexname FROM pg_indexes WHERE tablename = 'score_entry' "
                    "AND indexname <> 'score_entry_pkey'")
        indexes = cur.fetchall()
        for _def, name in indexes:
            cur.execute(f'DROP INDEX "{name}"')

        teachers_of: dict[int, list[int]] = {}
        for s, c, course in lay.teaching:
            if course != "体育":
                teachers_of.setdefault(c, []).append(s)
        lagging = {cid for cid, *_rest in lay.classes if rng.random() < 0.05}
        batches: list[str] = []
        ids = {"entry": 0, "batch": 0, "seq": 0}

        def recording(at: datetime, recorder: int, day: date, rows: Callable[[], Iterator[Row]],
                      revoked: datetime | None = None) -> Recording:
            ids["seq"] += 1
            return Recording(at, ids["seq"], recorder, day, rows, revoked)

        def late(sunday: date, first_thing: bool) -> datetime:
            """A `上周 …` recording in the grace window (Monday to Wednesday), some first thing on Monday."""
            monday = sunday + timedelta(days=1)
            if first_thing:
                return datetime.combine(monday, dtime(7, 0), TZ) + timedelta(minutes=rng.randrange(50))
            return datetime.combine(monday + timedelta(days=rng.choice((0, 1, 2))), dtime(8, 0), TZ) + \
                timedelta(minutes=rng.randrange(12 * 60))

        def plan_week(cid: int, dept: int, head: int, w: int) -> Iterator[Recording]:
            """One class's recordings of week `w`, each with the time it was made (on or after its day)."""
            roll = students_of[cid]
            monday = TERM_START + timedelta(weeks=w)
            wk, friday, sunday = week_key(monday), monday + timedelta(days=4), monday + timedelta(days=6)

            def weekly(code: str, values: Callable[[int], float], class_value: bool = False,
                       who: range | list[int] = roll, key: str = wk) -> Callable[[], Iterator[Row]]:
                def rows() -> Iterator[Row]:
                    for sid in who:
                        yield code, sid, None, key, values(sid)
                    if class_value:
                        yield "KA03", None, cid, key, float(rng.randint(88, 100))
                return rows

            def session_rows() -> Iterator[Row]:
                for sid in roll:
                    p = profiles[sid - 1]
                    yield "A02", sid, None, wk, 0.0 if rng.random() < _LATE[p] else 100.0
                    yield "A05", sid, None, wk, float(rng.choice(_A05[p]))
                    yield "A06", sid, None, wk, float(rng.choice(_A06[p]))

            for s in sorted(rng.sample(range(10), rng.choice((5, 6)))):  # half-days Mon–Fri
                day = monday + timedelta(days=s // 2)
                at = datetime.combine(day, dtime(8 if s % 2 == 0 else 14, 0), TZ) + timedelta(minutes=rng.randrange(50))
                teacher = rng.choice(teachers_of[cid])
                if rng.random() < 0.01:  # recorded wrongly, 撤销 five minutes later and recorded again
                    yield recording(at, teacher, day, session_rows, revoked=at + timedelta(minutes=5))
                    at += timedelta(minutes=7)
                yield recording(at, teacher, day, session_rows)

            def a03(sid: int) -> float:
                return float(rng.choice(_A03[profiles[sid - 1]]))

            if not (cid in lagging and w == weeks - 1):
                roll_ = rng.random()
                if roll_ < 0.75:
                    day, at = friday, datetime.combine(friday, dtime(16, 0), TZ) + timedelta(minutes=rng.randrange(180))
                elif roll_ < 0.85:
                    day = friday + timedelta(days=rng.choice((1, 2)))
                    at = datetime.combine(day, dtime(10, 0), TZ) + timedelta(minutes=rng.randrange(600))
                else:
                    day, at = sunday, late(sunday, rng.random() < 0.25)
                yield recording(at, head, day, weekly("A03", a03, class_value=True))
                if rng.random() < 0.1:  # a correction of a few students' 全勤率: the newer value replaces
                    fixed = rng.sample(list(roll), rng.randint(1, 3))
                    when = at + timedelta(hours=rng.uniform(1, 72))
                    if when.date() > sunday:  # 上周, by Wednesday (the grace window)
                        day = sunday
                        when = min(when, datetime.combine(sunday + timedelta(days=3), dtime(20, 0), TZ))
                    else:
                        day = max(day, when.date())
                    yield recording(when, head, day, weekly("A03", a03, who=fixed))
            office = lay.office[dept]
            if rng.random() < 0.85:
                day, at = friday, datetime.combine(friday, dtime(15, 0), TZ) + timedelta(minutes=rng.randrange(180))
            else:
                day, at = sunday, late(sunday, rng.random() < 0.25)
            yield recording(at, office, day, weekly("B09", lambda sid: float(rng.randint(*_B09[profiles[sid - 1]]))))
            at = datetime.combine(friday, dtime(10, 0), TZ)
            if w == 1:  # 学年初 documents
                def documents() -> Iterator[Row]:
                    for sid in roll:
                        for code in ("A01", "B01"):
                            if rng.random() < 0.85:
                                yield code, sid, None, YEAR, 1.0
                yield recording(at, head, friday, documents)
            if w == 7:  # 第一学期中: 职业生涯规划
                def plans() -> Iterator[Row]:
                    for sid in roll:
                        if rng.random() < 0.75:
                            yield "C01", sid, None, TERM_KEY, 1.0
                yield recording(at, lay.research[dept], friday, plans)
            if (friday + timedelta(days=7)).month != friday.month:  # last Friday: 满勤率 and counts
                month = f"{friday.year}-{friday.month:02d}"

                def monthly() -> Iterator[Row]:
                    for sid in roll:
                        yield "A04", sid, None, month, a03(sid)
                        if rng.random() < 0.1:
                            yield "A07", sid, None, month, 1.0
                yield recording(at + timedelta(hours=7), head, friday, monthly)
            if rng.random() < 0.02:  # the odd 违纪
                sid = rng.choice(roll)
                yield recording(at + timedelta(hours=1), office, friday,
                                weekly("B13", lambda _sid: 1.0, who=[sid], key=TERM_KEY))

        def write(r: Recording) -> Iterator[str]:
            ids["batch"] += 1
            at, revoked = r.at.isoformat(), r.revoked.isoformat() if r.revoked else NULL
            batches.append(f"{ids['batch']}\t{r.recorder}\tbench\t\\N\t\t{at}\t{revoked}\n")
            for code, sid, cid, key, value in r.rows():
                ids["entry"] += 1
                yield (f"{ids['entry']}\t{code}\t{sid or NULL}\t{cid or NULL}\t{key}\t{TERM_KEY}\t{r.day}\t{value}\t"
                       f"{r.recorder}\t{ids['batch']}\tbench\t{at}\t{revoked}\n")

        def entries() -> Iterator[str]:
            """Every recording in the order it was made, so ids grow with created_at as in production;
            a `上周` one made in the next week's grace window waits for that week."""
            waiting: list[Recording] = []
            for w in range(weeks):
                end = datetime.combine(TERM_START + timedelta(weeks=w + 1), dtime(0), TZ)
                due = sorted(waiting + [r for cid, _code, dept, _g, head, _c in lay.classes
                                        for r in plan_week(cid, dept, head, w)])
                waiting = [r for r in due if r.at >= end]
                for r in due:
                    if r.at < end:
                        yield from write(r)
            digest_at = datetime.combine(TERM_START + timedelta(weeks=weeks), DIGEST_AT, TZ)
            for r in waiting:  # Monday morning before the digest runs; the rest is still to come
                if r.at < digest_at:
                    yield from write(r)

        out.entries = _copy(cur, "score_entry",
                            "id, point_code, student_id, class_id, period_key, semester_key, occurred_on, value, "
                            "recorder_id, batch_id, source, created_at, revoked_at", entries())
        out.batches = _copy(cur, "recording_batch", "id, recorder_id, source, source_msg, text, created_at, "
                            "revoked_at", iter(batches))
        batches.clear()
        out.warnings = _warnings(cur, rng, lay)
        _tasks(cur, lay)
        for indexdef, _name in indexes:
            cur.execute(indexdef)
        for table in ("department", "staff", "school_class", "student", "teaching_assignment", "score_entry",
                      "recording_batch", "risk_warning", "risk_warning_event", "plan_task"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT coalesce(max(id), 1) FROM {table}))")
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return out


def _warnings(cur: psycopg.Cursor, rng: random.Random, lay: Layout) -> int:
    """About one warning per 50 students over the last four weeks, most acted on, some false alarms."""
    now = datetime.combine(TERM_START + timedelta(weeks=18), dtime(7, 50), TZ).astimezone(UTC)
    rules = (("学业", "absence_chronic", False), ("学业", "homework", False), ("违纪", "discipline_once", False),
             ("心理健康", "manual_心理健康", True), ("就业困难", "manual_就业困难", False))
    warnings, events = [], []
    eid = 0
    n = max(10, lay.students // 50)
    for wid in range(1, n + 1):
        sid = rng.randint(1, lay.students)
        cat, rule, sensitive = rng.choice(rules)
        opened = now - timedelta(hours=rng.uniform(1, 28 * 24))
        fate = rng.random()
        if fate < 0.55:
            status, closed = "handled", opened + timedelta(hours=rng.expovariate(1 / 30))
        elif fate < 0.7:
            status, closed = "false_alarm", opened + timedelta(hours=rng.expovariate(1 / 40))
        else:
            status, closed = "open", None
        if closed is not None and closed >= now:
            status, closed = "open", None
        key = f"{sid}/{cat}/{wid}" if status == "open" else "\\N"
        warnings.append(f"{wid}\t{sid}\t{cat}\t预警\t{status}\t{'t' if sensitive else 'f'}\t{key}\t\t"
                        f"{opened.isoformat()}\t{opened.isoformat()}\t"
                        f"{closed.isoformat() if closed else NULL}\n")
        eid += 1
        events.append(f"{eid}\t{wid}\t{opened.isoformat()}\topened\tsystem\t{rule}\n")
        if closed is not None:
            eid += 1
            events.append(f"{eid}\t{wid}\t{closed.isoformat()}\t{status}\tbench\t\\N\n")
    _copy(cur, "risk_warning", "id, student_id, category, level, status, sensitive, open_key, summary, opened_at, "
          "updated_at, closed_at", iter(warnings))
    _copy(cur, "risk_warning_event", "id, warning_id, at, kind, actor, rule_id", iter(events))
    return n


def _tasks(cur: psycopg.Cursor, lay: Layout) -> None:
    """A 任务分解表 of 120 tasks, a third of them past due and open."""
    owners = [s for s in lay.staff if s[4] is not None][:120]
    rows = []
    for i, (sid, *_rest) in enumerate(owners, start=1):
        due = TERM_START + timedelta(weeks=18 if i % 3 else 10)
        level = ("学校", "专业", "课程", "教师", "学生")[i % 5]
        rows.append(f"{i}\tT-{i}\t任务{i}\t{level}\t{sid}\t{due}\t2025\t0\topen\n")
    _copy(cur, "plan_task", "id, code, title, level, owner_id, due, cycle, progress, status", iter(rows))


# ── measurements ─────────────────────────────────────────────────────────────

def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall time of `repeat` runs (the first warms the cache), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


RAW_DIGEST = """
SELECT s.class_id, e.point_code,
       avg(e.value) FILTER (WHERE e.occurred_on >= :last_monday) AS last_week,
       avg(e.value) FILTER (WHERE e.occurred_on < :last_monday) AS week_before
FROM score_entry e JOIN student s ON s.id = e.student_id
WHERE e.revoked_at IS NULL AND e.occurred_on BETWEEN :start AND :sunday
GROUP BY s.class_id, e.point_code
"""

RAW_SEMESTER = """
SELECT student_id, point_code, count(*), sum(value)
FROM score_entry
WHERE revoked_at IS NULL AND student_id IS NOT NULL AND semester_key = :term AND occurred_on <= :sunday
GROUP BY student_id, point_code
"""

RAW_SCAN = """
SELECT student_id, point_code, count(*), sum(value), max(id)
FROM score_entry
WHERE revoked_at IS NULL AND student_id IS NOT NULL AND point_code IN :codes
  AND occurred_on BETWEEN :start AND :end
GROUP BY student_id, point_code
"""


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=15_000)
    parser.add_argument("--staff", type=int, default=600)
    parser.add_argument("--weeks", type=int, default=18)
    parser.add_argument("--cards", type=int, default=1_000)
    parser.add_argument("--pages", type=int, default=300,
                        help="card pages and chat cards to time (0: leave the pages out)")
    parser.add_argument("--db", default="czk_college")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--reuse-db", action="store_true",
                        help="skip generation: measure an existing --keep-db database")
    args = parser.parse_args()

    admin = admin_dsn(args.host, args.port, args.user)
    dsn = f"host={args.host} port={args.port} user={args.user} dbname={args.db}"
    url = f"postgresql+psycopg://{args.user}@{args.host}:{args.port}/{args.db}"
    print(f"college: {args.students} students, {args.staff} staff, {args.weeks} weeks → database {args.db}")
    if not args.reuse_db:
        start = time.perf_counter()
        recreate_database(admin, args.db)
        upgrade_database(url)
        lay = plan_layout(args.students, args.staff)
        gen = generate(dsn, lay, args.weeks)
        elapsed = time.perf_counter() - start
        print(f"generated in {elapsed:.1f} s: {len(lay.departments)} departments, {len(lay.classes)} classes, "
              f"{len(lay.staff)} staff, {gen.entries:,} score entries, {gen.batches:,} batches, "
              f"{gen.warnings} warnings (peak RSS so far {rss_mb():.0f} MB)")
    try:
        measure(url, args)
    finally:
        if not args.keep_db:
            drop_database(admin, args.db)
            print(f"dropped database {args.db}")


def measure(url: str, args: argparse.Namespace) -> None:
    import scheduler.jobs  # noqa: F401, PLC0415  (registers every job)
    from core.config import load_settings  # noqa: PLC0415
    from models.cards import student_card  # noqa: PLC0415
    from models.digest.college import build_college, overview_is_quick  # noqa: PLC0415
    from models.digest.recipients import recipients  # noqa: PLC0415
    from models.digest.summary import digest_context  # noqa: PLC0415
    from models.risk.rules import rule_book  # noqa: PLC0415
    from models.scores import load_calendar  # noqa: PLC0415
    from scheduler.notify.digest import weekly_markdown, weekly_text  # noqa: PLC0415

    catalogue = load_catalogue(ROOT / "models" / "catalogue.toml")
    book = rule_book(load_settings({"secret_key": "bench"}), catalogue)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    monday = TERM_START + timedelta(weeks=args.weeks)
    now = datetime.combine(monday, dtime(7, 50), TZ)
    sunday = monday - timedelta(days=1)
    results: list[tuple[str, str, bool]] = []

    with sessions() as session:
        cal = load_calendar(session)
        params = {"last_monday": sunday - timedelta(days=6), "start": sunday - timedelta(days=13), "sunday": sunday}
        # Counted, not kept: the rows are the benchmark's, not the jobs' memory.
        raw_digest, rows = timed(lambda: len(session.execute(text(RAW_DIGEST), params).all()))
        print(f"raw digest aggregate (per class and point, means of the last two weeks): {raw_digest:.3f} s "
              f"({rows} rows)")

        session.execute(text("SET work_mem = '64MB'"))  # as the digest sets for its own aggregate
        semester_s, rows = timed(lambda: len(session.execute(text(RAW_SEMESTER), {"term": "2025-2026-1",
                                                                                   "sunday": sunday}).all()))
        session.execute(text("RESET work_mem"))
        print(f"(for reference) semester aggregate per student and point, the floor of semester-to-date card "
              f"values: {semester_s:.3f} s = {semester_s / raw_digest:.2f} × raw ({rows} rows)")

        def all_digests(today: date = monday) -> int:
            """What the Monday job computes (it also queues the messages): build once (keeping the
            state for next week, committed), slice and render for every recipient."""
            data = build_college(session, catalogue, cal, today, TZ, book, persist=True)
            people = recipients(session)
            parts = sum(len(weekly_markdown(digest_context(data, p.department_id))) for p in people)
            session.commit()
            return parts

        def forget(cutoff: date | None = None) -> None:
            """Drop the digest's states (all, or the one as of `cutoff`), untimed."""
            where = "" if cutoff is None else " WHERE cutoff = :cutoff"
            session.execute(text(f"DELETE FROM digest_state{where}"), {"cutoff": cutoff})
            session.commit()

        def best_of(setup: Callable[[], None], repeat: int = 3) -> tuple[float, int]:
            """Best wall time of `repeat` digests, each after `setup` (untimed)."""
            best, messages = float("inf"), 0
            for _ in range(repeat):
                setup()
                start = time.perf_counter()
                messages = all_digests()
                best = min(best, time.perf_counter() - start)
            return best, messages

        n_people = len(recipients(session))
        cold_s, messages = best_of(forget, repeat=1)  # long, and only for reference: once
        print(f"cold digest, no state at week 18 (a changed catalogue, a new installation; for reference, "
              f"one run): {cold_s:.3f} s = {cold_s / raw_digest:.2f} × raw (peak RSS so far {rss_mb():.0f} MB)")
        forget()
        start = time.perf_counter()
        all_digests(monday - timedelta(days=7))
        print(f"last week's digest, as production ran it a week ago (untimed here: "
              f"{time.perf_counter() - start:.1f} s): leaves the state as of {sunday - timedelta(days=7)}")
        digest_s, messages = best_of(lambda: forget(sunday))
        ratio = digest_s / raw_digest
        print(f"this week's digest for all {n_people} recipients ({messages} messages), from last week's state, "
              f"writing this week's: {digest_s:.3f} s = {ratio:.2f} × raw = {digest_s / semester_s:.2f} × the "
              f"semester aggregate (peak RSS so far {rss_mb():.0f} MB)")
        results.append(("weekly digest ≤ 3 × raw aggregate", f"{ratio:.2f} ×", ratio <= TARGET_RATIO))

        # 本周概况 in chat on the Wednesday: what handlers/digest.py does for one 系部主任 (the check
        # that the state is recent, then build without writing, slice, render), best of three.
        wednesday = monday + timedelta(days=2)
        head = next(p for p in recipients(session) if p.department_id is not None)
        overview_s = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            quick = overview_is_quick(session, catalogue, cal, wednesday)
            data = build_college(session, catalogue, cal, wednesday, TZ, book)
            text_reply = weekly_text(digest_context(data, head.department_id))
            overview_s = min(overview_s, time.perf_counter() - start)
            session.rollback()
        print(f"本周概况 for one 系部主任 on Wednesday, from the stored state (inline: {quick}; "
              f"{len(text_reply.encode())} bytes): {overview_s:.3f} s")
        results.append(("本周概况 ≤ 1 s from the stored state", f"{overview_s:.3f} s",
                         quick and overview_s <= TARGET_OVERVIEW_S))

        raw_scan, scan_s = scan_figures(session, catalogue, cal, now, monday)
        if scan_s is None:
            print("risk scan: models.risk.scan not available: skipped")
        else:
            ratio = scan_s / raw_scan
            print(f"daily risk scan (first of the semester, best of three): {scan_s:.3f} s = {ratio:.2f} × raw")
            results.append(("risk scan ≤ 3 × raw aggregate", f"{ratio:.2f} ×", ratio <= TARGET_RATIO))

        rng = random.Random(5)
        n_students = session.execute(text("SELECT max(id) FROM student")).scalar_one()
        times = []
        for i in range(args.cards + 20):
            sid = rng.randint(1, n_students)
            start = time.perf_counter()
            student_card(session, catalogue, cal, sid, monday)
            if i >= 20:  # the first few warm the connection and caches
                times.append((time.perf_counter() - start) * 1000)
            session.expunge_all()
        times.sort()
        p50 = statistics.median(times)
        p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
        print(f"{len(times)} card queries: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {times[-1]:.1f} ms")
        results.append(("card query p99 ≤ 20 ms", f"{p99:.1f} ms", p99 <= TARGET_CARD_P99_MS))
    engine.dispose()
    if args.pages:
        from bench.college_pages import page_figures  # noqa: PLC0415

        results += page_figures(url, monday + timedelta(days=2), args.pages)
    peak = rss_mb()
    print(f"peak RSS: {peak:.0f} MB")
    results.append(("peak RSS ≤ 300 MB", f"{peak:.0f} MB", peak <= TARGET_RSS_MB))
    print()
    for name, figure, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {figure}")


def scan_figures(session, catalogue, cal, now: datetime, today: date) -> tuple[float, float | None]:  # noqa: ANN001
    """The raw per-student aggregate over every rule window, and the scan itself: the first over the
    college (returned), then a second right after it (printed); rolled back."""
    try:
        from core.config import load_settings  # noqa: PLC0415
        from models.risk import aggregates, checks, matching, rules  # noqa: PLC0415
        from scheduler.notify import warnings as notify  # noqa: PLC0415
    except ImportError:
        return 0.0, None
    book = rules.rule_book(load_settings({"secret_key": "bench"}), catalogue)
    windows: dict[str, set[str]] = {}
    for rule in book.automatic():
        if rule.kind in ("threshold", "missing"):
            windows.setdefault(rule.window, set()).update(rule.points)
        elif rule.kind == "trend":
            codes = {p.code for p in matching.trend_points(catalogue, rule.domain or "")}
            windows.setdefault(rule.window, set()).update(codes)
            start, _end = aggregates.window_bounds(rule.window, today, cal)
            before_end = start - timedelta(days=1)
            b_start, _ = aggregates.window_bounds(rule.baseline or "56d", before_end, cal)
            windows.setdefault(f"baseline:{b_start}:{before_end}", set()).update(codes)
    from sqlalchemy import bindparam  # noqa: PLC0415

    query = text(RAW_SCAN).bindparams(bindparam("codes", expanding=True))

    def raw() -> int:
        n = 0
        for window, codes in windows.items():
            if window.startswith("baseline:"):
                _tag, start_s, end_s = window.split(":")
                start, end = date.fromisoformat(start_s), date.fromisoformat(end_s)
            else:
                start, end = aggregates.window_bounds(window, today, cal)
            n += len(session.execute(query, {"codes": sorted(codes), "start": start, "end": end}).all())
        return n

    raw_s, rows = timed(raw)
    print(f"raw scan aggregate (per student, rule points over {len(windows)} rule windows): {raw_s:.3f} s "
          f"({rows} rows)")

    def scan(label: str) -> float:
        start = time.perf_counter()
        out = checks.scan(session, book, catalogue, cal, now, today, notify=notify, tz=TZ)
        took = time.perf_counter() - start
        print(f"  {label}: {took:.3f} s: {out.line()} (peak RSS so far {rss_mb():.0f} MB)")
        return took

    def scans() -> tuple[float, float]:
        """The first scan over the college, best of three (each rolled back, like the raw aggregate's
        best of three), then a second right after the last (its warnings open); rolled back."""
        firsts = []
        for n in range(1, 4):
            if n > 1:
                session.rollback()
            firsts.append(scan(f"first scan, run {n}"))
        second = scan("second scan, right after")
        session.rollback()
        return min(firsts), second

    first_s, second_s = scans()
    print(f"daily risk scan, second run right after the first (steady state, warnings open): {second_s:.3f} s "
          f"= {second_s / raw_s:.2f} × raw")
    return raw_s, first_s


if __name__ == "__main__":
    main()
