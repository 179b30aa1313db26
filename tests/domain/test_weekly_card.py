"""The student's weekly card (`student_weekly_card`) and 退订周报 / 订阅周报, on the real database.

Records are made through the chat pipeline on their days; the job runs through the runner
as the scheduler would on Monday 24 November 2025, reporting on 17–23 November (2025-W47).
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import event, select

from bot import create_app
from models.page_links import read_link
from models.schema import AuditLog, OutboxMessage, SchoolClass, Student
from scheduler import weekly_card
from scheduler.registry import JOBS
from scheduler.runner import run_job
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = date(2025, 11, 24)


def record(db_url, redis_url, day: date, userid: str, text: str) -> None:
    reply = say(make_service(db_url, day, redis_url), userid, text)
    assert "已记录" in reply, reply


def history(db_url, redis_url) -> None:
    """张三: homework falling, attendance 85% last week, no plans; 李四: 学业计划 handed in, all well."""
    for day in (date(2025, 10, 29), date(2025, 11, 5), date(2025, 11, 12)):
        record(db_url, redis_url, day, "chenjing", "作业完成率 张三 90 李四 95")
    record(db_url, redis_url, date(2025, 11, 5), "wangfang", "学业计划 李四\n全勤率 张三 100 李四 100")
    record(db_url, redis_url, date(2025, 11, 12), "wangfang", "全勤率 张三 100 李四 100")
    record(db_url, redis_url, date(2025, 11, 18), "chenjing", "作业完成率 张三 70 李四 100")
    record(db_url, redis_url, date(2025, 11, 20), "chenjing", "作业完成率 张三 75")
    record(db_url, redis_url, date(2025, 11, 21), "wangfang", "全勤率 张三 85 李四 100\n课外学习 李四 2")
    record(db_url, redis_url, date(2025, 11, 21), "liuwei", "心理辅导 张三")
    record(db_url, redis_url, date(2025, 11, 24), "wangfang", "全勤率 李四 60")  # this week: not in the card


def run(db_url, redis_url, day: date = MONDAY, at: time = time(8, 10)):
    service = make_service(db_url, day, redis_url)
    return run_job(service, "student_weekly_card", datetime.combine(day, at, TZ))


def cards(session, key: str = "2025-W47") -> dict[str, str]:
    session.expire_all()
    rows = session.scalars(select(OutboxMessage).where(
        OutboxMessage.purpose == "student_weekly_card", OutboxMessage.period_key == key)).all()
    assert len({r.recipient for r in rows}) == len(rows)
    return {r.recipient: r.body for r in rows}


def open_link(db_url, redis_url, url: str, day: date = MONDAY):
    """Open a link from a message in a browser (the Flask test client): the page it lands on."""
    base = "http://localhost:8000"  # PUBLIC_BASE_URL's default, as make_service leaves it
    assert url.startswith(base + "/h5/card?t=")
    client = create_app(service=make_service(db_url, day, redis_url)).test_client()
    first = client.get(url[len(base):])
    assert first.status_code == 302
    return client.get(first.headers["Location"])


def link_line(body: str) -> str:
    """The card's last line, the link to its page; the url alone."""
    last = body.splitlines()[-1]
    assert last.startswith("查看图表：http"), last
    return last.removeprefix("查看图表：")


def test_job_is_registered_for_monday_morning_not_on_the_hour():
    job = JOBS["student_weekly_card"]
    assert job.cron["day_of_week"] == "mon" and job.cron["hour"] == "8" and job.cron["minute"] == "10"


def test_weekly_card_content_is_personal_and_signed(college, session, db_url, redis_url):
    history(db_url, redis_url)
    result = run(db_url, redis_url)
    assert result.status == "ok", result.result
    body = cards(session)["zhangsan"]
    lines = body.splitlines()
    assert lines[0] == "张三同学，这是你上周（11月17日–11月23日）的储值卡："
    # 学业发展 on Sunday 16: 全勤率 weeks 100, 100 → 100; 作业 90, 90, 90 → 90; subtotal 95.0.
    # On Sunday 23: 全勤率 (100 + 100 + 85) / 3 = 95; 作业 (90 × 3 + 70 + 75) / 5 = 83; subtotal 89.0.
    # 心理辅导 weighs 0, so 个人发展 has no subtotal and the total is 学业发展's.
    assert lines[1] == "总分 89.0，一周增值 -6.0"
    assert lines[2] == "学业发展 89.0（-6.0）"
    chat = say(make_service(db_url, date(2025, 11, 23), redis_url), "zhangsan", "储值卡")
    assert "总分 89.0　增值 -6.0（较上周）" in chat  # the chat card on that Sunday says the same
    assert "上周记录：全勤率 85%、作业完成率 72.5%（2次课）" in body
    assert "心理辅导" not in body  # sensitive: never in a push
    assert "· 上周全勤率 85%，低于 90%" in body
    assert "· 上周作业完成率 72.5%，比前几周（90%）下降了" in body
    assert "· 学业计划还没有提交（截止 9月28日，已逾期）" in body
    assert "· 职业生涯规划还没有提交（截止 11月16日，已逾期）" in body
    # ONE next step, attendance first.
    [step] = [ln for ln in lines if ln.startswith("下一步：")]
    assert step == "下一步：本周每节课按时到；确有事要请假，提前向班主任王芳老师请假。"
    assert lines[-2] == "——班主任 王芳"
    assert len(body.encode("utf-8")) <= 2048
    # It ends with a link to 张三's card page, signed for 张三, also the row's url.
    url = link_line(body)
    row = session.scalar(select(OutboxMessage).where(OutboxMessage.recipient == "zhangsan"))
    assert row.url == url and row.msgtype == "text"
    settings = make_service(db_url, MONDAY, redis_url).settings
    assert read_link(settings, url.split("?t=")[1]) == ("wecom", "zhangsan")
    page = open_link(db_url, redis_url, url)
    assert page.status_code == 200 and "张三的储值卡" in page.get_data(as_text=True)
    assert "89.0" in page.get_data(as_text=True)

    li = cards(session)["lisi"]
    assert "学业计划还没有提交" not in li and "· 个人发展规划还没有提交（截止 9月28日，已逾期）" in li
    assert "下一步：本周内写好《个人发展规划》，交给班主任王芳老师登记。" in li
    assert "课外学习频次 2次" in li and "60%" not in li  # this Monday's 全勤率 belongs to next week


def test_who_gets_one_and_a_rerun_sends_nothing_new(college, session, db_url, redis_url):
    svc = make_service(db_url, date(2025, 11, 22), redis_url)
    assert "已退订" in say(svc, "wangwu", "退订周报")
    acc = session.get(SchoolClass, college.acc.id)
    acc.head_teacher_id = None  # 会计2301 without 班主任 or 辅导员: nobody to sign, no message
    session.commit()

    first = run(db_url, redis_url)
    assert first.result == ("2025-W47: queued 3 weekly cards, 0 already queued, 1 unsubscribed, "
                            "2 without WeCom account or binding, 1 without 班主任; 3 on WeCom, 0 to students "
                            "and 0 to parents on the Official Account, 0 parents unsubscribed")
    sent = cards(session)
    assert set(sent) == {"zhangsan", "lisi", "zhaoliu"}
    assert sent["zhaoliu"].splitlines()[-2] == "——班主任 何平"
    urls = {r.recipient: r.url for r in session.scalars(select(OutboxMessage))}
    assert all(urls[k] == link_line(body) for k, body in sent.items())
    assert "上周没有新的记录。" in sent["zhaoliu"]
    assert "下一步：本周内写好《学业计划》" in sent["zhaoliu"]

    again = run(db_url, redis_url, at=time(15, 0))
    assert again.result.startswith("2025-W47: queued 0 weekly cards, 3 already queued")
    assert cards(session) == sent  # nothing new, nothing rewritten (not even the links)
    assert {r.recipient: r.url for r in session.scalars(select(OutboxMessage))} == urls

    assert "已订阅" in say(svc, "wangwu", "订阅周报")
    third = run(db_url, redis_url, MONDAY.replace(day=25))
    assert third.result.startswith("2025-W47: queued 1 weekly cards, 3 already queued")
    assert "wangwu" in cards(session)


def test_counsellor_signs_when_a_class_has_no_head_teacher(college, session, db_url, redis_url):
    cs = session.get(SchoolClass, college.cs.id)
    cs.head_teacher_id = None
    session.commit()
    run(db_url, redis_url)
    assert cards(session)["zhangsan"].splitlines()[-2] == "——辅导员 刘伟"


def test_vacation_week_sends_nothing(session, db_url, redis_url):
    small_college(session, with_calendar=True)  # term 1 ends 18 January, term 2 starts 23 February
    result = run(db_url, redis_url, date(2026, 2, 9))
    assert result.result == "2026-W06: nothing sent (vacation week)"
    assert cards(session, "2026-W06") == {}


def test_queries_do_not_grow_with_the_number_of_students(college, session, db_url, redis_url):
    history(db_url, redis_url)
    service = make_service(db_url, MONDAY, redis_url)
    statements: list[str] = []
    event.listen(service.engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    run_job(service, "student_weekly_card", datetime.combine(MONDAY, time(8, 10), TZ))
    small = len(statements)

    session.add_all([Student(student_no=f"20230109{i:02d}", name=f"学生{i}", class_id=college.cs.id,
                             wecom_userid=f"s{i}") for i in range(80)])
    session.commit()
    statements.clear()
    nxt = date(2025, 12, 1)
    run_job(service, "student_weekly_card", datetime.combine(nxt, time(8, 10), TZ))
    assert len(cards(session, "2025-W48")) == 5 + 80
    assert len(statements) <= small + 1, statements


def test_week_facts_priorities(catalogue):
    from models.card import Card, DomainCard

    card = Card([DomainCard("学业发展", 80.0), DomainCard("个人发展", 70.0), DomainCard("职业发展", None)], 76.0)
    plan_late = {"kind": "plan", "overdue": True, "deadline": date(2025, 9, 28)}
    plan_soon = {"kind": "plan", "overdue": False, "deadline": date(2025, 11, 30)}
    homework = {"kind": "homework"}
    assert weekly_card.next_step([plan_soon, plan_late, homework], card) is homework
    assert weekly_card.next_step([plan_soon, plan_late], card) is plan_late
    assert weekly_card.next_step([], card) == {"kind": "domain", "domain": "个人发展"}
    assert weekly_card.next_step([], Card([DomainCard(d, None) for d in ("学业发展",)], None)) == {"kind": "start"}


def test_unsubscribe_and_subscribe_are_for_students_and_audited(college, session, db_url, redis_url):
    svc = make_service(db_url, MONDAY, redis_url)
    assert "已退订每周储值卡" in say(svc, "zhangsan", "退订周报")
    assert "之前已退订" in say(svc, "zhangsan", "退订周报")
    session.expire_all()
    zhang = session.scalar(select(Student).where(Student.student_no == "2023010101"))
    assert zhang.weekly_card is False
    assert "已订阅每周储值卡" in say(svc, "zhangsan", "订阅周报")
    session.expire_all()
    assert session.get(Student, zhang.id).weekly_card is True
    actions = [a.action for a in session.scalars(select(AuditLog).where(AuditLog.entity == "student"))]
    assert actions == ["unsubscribe", "subscribe"]
    assert "仅限" in say(svc, "wangfang", "退订周报") or "不能使用" in say(svc, "wangfang", "退订周报")
    assert "退订周报 / 订阅周报" in say(svc, "zhangsan", "帮助")


def test_a_parent_gets_the_childs_card_addressed_to_them(college, session, db_url, redis_url):
    from models.schema import FollowerBinding

    history(db_url, redis_url)
    zhang = session.scalar(select(Student).where(Student.student_no == "2023010101"))
    li = session.scalar(select(Student).where(Student.student_no == "2023010102"))
    session.add_all([FollowerBinding(openid="o-zhang-mum", student_id=zhang.id, kind="parent"),
                     FollowerBinding(openid="o-li-dad", student_id=li.id, kind="parent", weekly_card=False)])
    zhang.weekly_card = False  # the student's own 退订周报 does not stop the parent's
    session.commit()
    result = run(db_url, redis_url)
    assert "1 to parents on the Official Account, 1 parents unsubscribed" in result.result
    sent = cards(session)
    assert "zhangsan" not in sent and "o-li-dad" not in sent
    body = sent["o-zhang-mum"]
    lines = body.splitlines()
    assert lines[0] == "张三同学的家长您好，这是张三上周（11月17日–11月23日）的储值卡："
    assert lines[1] == "总分 89.0，一周增值 -6.0"
    assert "需要张三处理：" in body and "需要你处理" not in body
    assert "心理辅导" not in body  # a push never shows a sensitive point, to a parent neither
    assert lines[-2] == "——班主任 王芳"
    session.expire_all()
    row = session.scalar(select(OutboxMessage).where(OutboxMessage.recipient == "o-zhang-mum"))
    assert row.channel == "mp" and row.purpose == "student_weekly_card"
    # The template message opens the card page, signed for the parent: the child's card, nothing sensitive.
    assert row.url == link_line(body)
    page = open_link(db_url, redis_url, row.url)
    assert page.status_code == 200 and "张三的储值卡" in page.get_data(as_text=True)
    assert "心理" not in page.get_data(as_text=True)


def test_the_parents_next_step_names_the_child():
    from models.card import Card, DomainCard

    card = Card([DomainCard("学业发展", 80.0), DomainCard("个人发展", 70.0)], 75.0)
    facts = {"recorded": [], "todos": [], "domains": [], "step": {"kind": "domain", "domain": "个人发展"}}

    class Week:
        monday, sunday = date(2025, 11, 17), date(2025, 11, 23)

    student = weekly_card.card_body("张三", "班主任 王芳", "王芳", Week, card, facts)
    parent = weekly_card.card_body("张三", "班主任 王芳", "王芳", Week, card, facts, parent=True)
    assert "下一步：个人发展是你目前最弱的一项" in student
    assert "下一步：个人发展是张三目前最弱的一项" in parent
