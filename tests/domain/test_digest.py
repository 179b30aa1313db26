"""The weekly digest (`weekly_digest`) and `本周概况`, on the demo college.

The demo is loaded as of Monday 24 November 2025; the digest reports on 17–23 November
(2025-W47). A few of that week's 全勤率 entries are undone so that a recorder is behind, and
warnings and an overdue plan task are added by hand.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from statistics import fmean
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

import scheduler.jobs  # noqa: F401  (registers every job)
from core.config import load_settings
from models.cards import student_card
from models.catalogue import DOMAINS
from models.digest.college import build_college
from models.digest.recipients import PURPOSE
from models.digest.summary import digest_context
from models.io.demo import load_demo
from models.risk.rules import rule_book
from models.schema import (
    Department,
    OutboxMessage,
    PlanTask,
    RiskWarning,
    RiskWarningEvent,
    SchoolClass,
    ScoreEntry,
    Staff,
    Student,
)
from models.scores import load_calendar
from scheduler.notify.digest import weekly_markdown, weekly_text
from scheduler.registry import JOBS
from scheduler.runner import run_job
from tests.fakes.chat import make_service, say
from wechat.wecom_api import MAX_TEXT_BYTES as MAX_BYTES

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2025, 11, 24)
SUNDAY = date(2025, 11, 23)
WEEK = "2025-W47"


def college_data(session, catalogue, day: date = MONDAY):
    """The college's digest data as the jobs build it (the shipped rules, Asia/Shanghai)."""
    return build_college(session, catalogue, load_calendar(session), day, TZ,
                         rule_book(load_settings(environ={}), catalogue))


@pytest.fixture
def demo(session, catalogue):
    """The demo college, with gaps in last week's data entry, warnings and an overdue task."""
    load_demo(session, catalogue, MONDAY, tz=TZ)
    cs = session.scalar(select(SchoolClass).where(SchoolClass.code == "计算机2301"))
    students = session.scalars(select(Student.id).where(Student.class_id == cs.id).order_by(Student.id)).all()
    # 王芳 did not record 全勤率 for five of her students last week.
    for entry in session.scalars(select(ScoreEntry).where(
            ScoreEntry.point_code == "A03", ScoreEntry.period_key == WEEK,
            ScoreEntry.student_id.in_(students[:5]))):
        entry.revoked_at = datetime(2025, 11, 22, tzinfo=UTC)
    # 全勤率 of one student recorded twice in W46 and in W47: the newer value replaces the older.
    for entry in session.scalars(select(ScoreEntry).where(
            ScoreEntry.point_code == "A03", ScoreEntry.period_key.in_(["2025-W46", WEEK]),
            ScoreEntry.student_id == students[8])).all():
        session.add(ScoreEntry(point_code="A03", student_id=entry.student_id, period_key=entry.period_key,
                               semester_key=entry.semester_key, occurred_on=entry.occurred_on,
                               value=40.0 if entry.period_key == WEEK else 70.0,
                               recorder_id=entry.recorder_id, batch_id=entry.batch_id))
    opened = datetime(2025, 11, 18, 2, 0, tzinfo=UTC)
    w1 = RiskWarning(student_id=students[5], category="学业", level="预警", opened_at=opened,
                     status="handled", closed_at=opened + timedelta(hours=5))
    w2 = RiskWarning(student_id=students[6], category="心理健康", level="严重", sensitive=True, opened_at=opened,
                     open_key=f"{students[6]}/心理健康")
    w3 = RiskWarning(student_id=students[7], category="学业", level="关注", opened_at=opened,
                     status="false_alarm", closed_at=opened + timedelta(hours=30))
    session.add_all([w1, w2, w3])
    session.flush()
    session.add_all([
        RiskWarningEvent(warning_id=w1.id, kind="opened", rule_id="absence_chronic", at=opened),
        RiskWarningEvent(warning_id=w1.id, kind="handled", at=opened + timedelta(hours=5)),
        RiskWarningEvent(warning_id=w2.id, kind="opened", rule_id="manual_心理健康", at=opened),
        RiskWarningEvent(warning_id=w3.id, kind="opened", rule_id="absence_chronic", at=opened),
        RiskWarningEvent(warning_id=w3.id, kind="false_alarm", at=opened + timedelta(hours=30)),
    ])
    owner = session.scalar(select(Staff).where(Staff.wecom_userid == "sunli"))
    session.add(PlanTask(code="1.1", title="修订学生管理办法", level="学生工作", owner_id=owner.id,
                         due=date(2025, 11, 10), cycle=2025))
    session.commit()
    return cs


def run(db_url, redis_url, day: date = MONDAY, at: time = time(7, 50)):
    return run_job(make_service(db_url, day, redis_url), "weekly_digest", datetime.combine(day, at, TZ))


def digests(session) -> dict[str, list[OutboxMessage]]:
    session.expire_all()
    out: dict[str, list[OutboxMessage]] = {}
    for row in session.scalars(select(OutboxMessage).where(OutboxMessage.purpose == PURPOSE)
                               .order_by(OutboxMessage.id)):
        out.setdefault(row.recipient, []).append(row)
    return out


def test_job_runs_monday_morning_not_on_the_hour():
    job = JOBS["weekly_digest"]
    assert job.cron == {"day_of_week": "mon", "hour": "7", "minute": "50"}


def test_one_digest_per_leader_and_department_head_and_rerun_sends_nothing(demo, session, db_url, redis_url):
    result = run(db_url, redis_url)
    assert result.status == "ok", result.result
    sent = digests(session)
    # 院领导 郑远 (college), 系部主任 吴军 (信息工程系) and 潘刚 (经济管理系): one digest each.
    assert set(sent) == {"zhengyuan", "wujun", "pangang"}
    for rows in sent.values():
        assert len(rows) == 1
        row = rows[0]
        assert row.msgtype == "markdown" and row.period_key == WEEK
        assert len(row.body.encode("utf-8")) <= MAX_BYTES
    college, it, em = (sent[u][0].body for u in ("zhengyuan", "wujun", "pangang"))
    assert "全院" in college and "2025年第47周" in college
    # The department digest is about its own department only.
    assert "信息工程系" in it and "经济管理系" not in it
    for code in ("会计2301", "电商2401", "物流2501"):
        name = session.scalar(select(SchoolClass.name).where(SchoolClass.code == code))
        assert name not in it
    assert "计算机应用技术2301班" not in em
    # Data entry: 王芳 misses five 全勤率 of 计算机2301, named in the college and IT digests.
    assert "王芳（缺 5 项" in college and "王芳（缺 5 项" in it and "王芳" not in em
    assert "计算机应用技术2301班 9" in it  # the class's share is below 100 %
    # Warnings: 学业 with its timing; 心理健康 as counts only; no student is ever named.
    assert "学业：新增 2，在办 0，72小时内处理 100%，超72小时未处理 0，首次处理中位 18小时" in college
    assert "心理健康：新增 1，在办 1，超72小时未处理 1（敏感类别，仅计数）" in college
    names = session.scalars(select(Student.name)).all()
    for body in (college, it, em):
        assert not any(n in body for n in names if len(n) >= 2)
    assert "近4周全勤率低于90%（1/2）" in college
    # Plan tasks: 孙丽 (信息工程系) owns one overdue 学生工作 task.
    assert "共 1 项：学生工作 1 项" in college and "共 1 项：学生工作 1 项" in it
    assert "没有逾期的计划任务" in em

    again = run(db_url, redis_url, at=time(9, 5))
    assert again.status == "ok", again.result
    assert "queued 0 digests" in again.result
    assert session.scalar(select(func.count()).select_from(OutboxMessage)
                          .where(OutboxMessage.purpose == PURPOSE)) == 3


def test_numbers_match_the_cards(demo, session, catalogue):
    cal = load_calendar(session)
    data = college_data(session, catalogue)
    assert data.week.key == WEEK and data.week.sunday == SUNDAY
    every: dict[str, list[float]] = {d: [] for d in DOMAINS}
    for klass in data.classes.values():
        ids = session.scalars(select(Student.id).where(Student.class_id == klass.id)).all()
        cards = [student_card(session, catalogue, cal, sid, SUNDAY)[0] for sid in ids]
        for i, domain in enumerate(DOMAINS):
            subtotals = [c.subtotal(domain) for c in cards if c.subtotal(domain) is not None]
            every[domain] += subtotals
            now, _before = klass.averages.domain(i)
            assert now == pytest.approx(fmean(subtotals), abs=1e-9), (klass.code, domain)
        totals = [c.total for c in cards if c.total is not None]
        assert klass.averages.total[0] == pytest.approx(fmean(totals), abs=1e-9)
        added = [c.value_added for c in cards if c.value_added is not None]
        assert klass.averages.value_added == pytest.approx(fmean(added), abs=1e-9)
    context = digest_context(data, None)
    for d in context["domains"]:
        assert d["mean"] == round(fmean(every[d["domain"]]), 1)
    body = weekly_markdown(context)[0]
    for d in context["domains"]:
        assert f"- {d['domain']} {d['mean']:.1f}（" in body


def test_long_digest_is_split_into_numbered_parts(demo, session, catalogue):
    data = college_data(session, catalogue)
    context = digest_context(data, None)
    parts = weekly_markdown(context, limit=700)
    assert len(parts) > 1
    for i, part in enumerate(parts, start=1):
        assert len(part.encode("utf-8")) <= 700
        assert f"（{i}/{len(parts)}）" in part.splitlines()[0]
    text = weekly_text(context, limit=700)
    assert len(text.encode("utf-8")) <= 700 and "其余从略" in text


def test_split_parts_are_idempotent_too(demo, session, db_url, redis_url, monkeypatch):
    from scheduler import digest_jobs

    real = digest_jobs.weekly_markdown
    monkeypatch.setattr(digest_jobs, "weekly_markdown", lambda ctx, link=None: real(ctx, limit=700, link=link))
    assert run(db_url, redis_url).status == "ok"
    sent = digests(session)
    keys = [r.period_key for r in sent["zhengyuan"]]
    assert len(keys) > 1 and keys == [f"{WEEK}-{i}" for i in range(1, len(keys) + 1)]
    # Every part within the limit, the link to the dashboard whole at the end of the last one only.
    bodies = [r.body for r in sent["zhengyuan"]]
    assert all(len(b.encode("utf-8")) <= 700 for b in bodies)
    assert [b.splitlines()[-1].startswith("[查看图表](http") for b in bodies] == [False] * (len(bodies) - 1) + [True]
    before = sum(len(v) for v in sent.values())
    monkeypatch.setattr(digest_jobs, "weekly_markdown", real)  # a rerun that would not split
    again = run(db_url, redis_url, at=time(8, 20))
    assert "queued 0 digests" in again.result
    assert sum(len(v) for v in digests(session).values()) == before


def test_weekly_overview_in_chat(demo, session, db_url, redis_url):
    service = make_service(db_url, date(2025, 11, 26), redis_url)
    it = say(service, "wujun", "本周概况")
    assert it.startswith("储值卡周报 · 信息工程系") and "2025年第47周" in it
    assert "王芳（缺 5 项" in it and "经济管理系" not in it
    assert len(it.encode("utf-8")) <= MAX_BYTES
    college = say(service, "zhengyuan", "本周概况")
    assert college.startswith("储值卡周报 · 全院") and "心理健康：新增 1" in college
    refused = say(service, "wangfang", "本周概况")
    assert "不能使用" in refused and "周报" not in refused.replace("本周概况", "")
    student = say(service, "zhangsan", "本周概况")
    assert "仅限教职工" in student


def test_a_cold_overview_in_a_callback_is_answered_at_once_and_pushed_when_built(demo, session, db_url, redis_url):
    """Without a recent digest state the digest is built from every entry of the semester (about
    10 s at college scale): a web process (WeChat waits 5 s) answers at once and the scheduler's
    next delivery round builds it and queues it to the asker, once; the console computes it inline."""
    from models.schema import OverviewRequest
    from scheduler.digest_jobs import OVERVIEW_PURPOSE, answer_overview_requests

    wednesday = date(2025, 11, 26)
    inline = say(make_service(db_url, wednesday, redis_url), "wujun", "本周概况")
    web = make_service(db_url, wednesday, redis_url)
    web.background = True  # as create_app builds it for gunicorn
    first = say(web, "wujun", "本周概况")
    assert "推送" in first and "储值卡周报" not in first
    assert "推送" in say(web, "zhengyuan", "本周概况")
    assert len(session.scalars(select(OverviewRequest)).all()) == 2

    assert answer_overview_requests(web.sessions, web.catalogue, wednesday, web.tz, web.rules(), web.settings) == 2
    again = answer_overview_requests(web.sessions, web.catalogue, wednesday, web.tz, web.rules(), web.settings)
    assert again == 0  # nothing twice
    session.expire_all()
    pushed = {m.recipient: m.body for m in session.scalars(
        select(OutboxMessage).where(OutboxMessage.purpose == OVERVIEW_PURPOSE))}
    # The same digest; each ends with a link to the dashboard, signed for its channel (console / WeCom).
    assert pushed["wujun"].rsplit("\n", 1)[0] == inline.rsplit("\n", 1)[0]
    assert inline.splitlines()[-1].startswith("查看图表：http://localhost:8000/h5/dashboard?t=")
    assert pushed["wujun"].splitlines()[-1].startswith("查看图表：http://localhost:8000/h5/dashboard?t=")
    assert pushed["zhengyuan"].startswith("储值卡周报 · 全院")

    # Once a Monday job has left the state this digest merges from (as of the Sunday before the
    # week it reports on: last Monday's run), the same web process answers inline.
    run(db_url, redis_url, day=MONDAY - timedelta(days=7))
    warm = say(web, "wujun", "本周概况")
    assert warm.rsplit("\n", 1)[0] == inline.rsplit("\n", 1)[0]  # the links differ by when they were signed
    session.expire_all()
    assert len(session.scalars(select(OverviewRequest)).all()) == 2


def test_department_head_by_role_only(demo, session, db_url, redis_url):
    """A 系部主任 known by 角色 and 系部 (the 系部 sheet names nobody) gets their department."""
    em = session.scalar(select(Department).where(Department.name == "经济管理系"))
    em.head_staff_no = None
    session.commit()
    assert run(db_url, redis_url).status == "ok"
    body = digests(session)["pangang"][0].body
    assert "储值卡周报 · 经济管理系" in body
