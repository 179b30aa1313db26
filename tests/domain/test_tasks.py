"""Plan tasks: the 任务 sheet import, the chat commands, deadline reminders and 督办, the table 9 cycle."""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import func, select

from core.config import load_settings
from core.render import render
from core.schedules import CycleSettings
from models.io.roster import NEW, SAME, UPDATED
from models.io.tasks_import import TaskImportError, import_tasks
from models.schema import (
    AuditLog,
    OutboxMessage,
    PlanTask,
    PlanTaskUpdate,
    ScoreEntry,
    Staff,
    Student,
)
from models.tasks import (
    carry_over,
    cycle_of,
    find_task,
    fit_sections,
    rectification_list,
    report_achievement,
)
from scheduler import plan_cycle  # noqa: F401  (registers the plan-cycle jobs)
from scheduler.jobs import scheduled_jobs
from scheduler.registry import JOBS, JobContext
from scheduler.runner import run_job
from tests.edges.test_cli import run_bot
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college

TZ = ZoneInfo("Asia/Shanghai")
SETTINGS = load_settings(environ={"SECRET_KEY": "test"})  # the defaults, whatever the environment says


def worded(problems: list) -> list[str]:
    """Problems as the CLI prints them."""
    return [render("errors/problem.txt", p=p) for p in problems]


def carried_note(cycle: int, task: PlanTask) -> str:
    """The 整改 note as the plan-cycle job words it."""
    return render("push/task_carried_note.txt", cycle=cycle, task=task)


HEADERS = ["编号", "任务", "层面", "负责人工号", "督办人工号", "开始日期", "截止日期"]
ENGLISH = ["code", "Title", "level", "owner_no", "supervisor_no", "start_date", "due_date"]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def college(session):
    return small_college(session, with_calendar=True)


def make_xlsx(path: Path, rows: list[list], headers: list[str] = HEADERS, sheet: str = "任务",
              title: str | None = None, extra_sheet: bool = True) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    if title:
        ws.append([title])
    ws.append(headers)
    for r in rows:
        ws.append(r)
    if extra_sheet:
        wb.create_sheet("说明").append(["填表说明：编号唯一"])
    wb.save(path)
    return path


def make_csv(path: Path, rows: list[list], headers: list[str] = HEADERS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(headers)
        for r in rows:
            w.writerow(["" if c is None else (c.date().isoformat() if isinstance(c, datetime) else c) for c in r])
    return path


GOOD = [
    ["1.1", "完善计算机专业人才培养方案", "专业", "T001", "T900", datetime(2026, 3, 1), datetime(2026, 6, 30)],
    ["1.2", "组织职业技能竞赛", "系部", "T001", "T900", None, "2026/10/15"],
    ["2.1", "修订课程标准", "课程", "T002", "T001", "2026-02-01", "2027年1月10日"],
]


def tasks_by_code(session) -> dict[str, PlanTask]:
    session.expire_all()
    return {t.code: t for t in session.scalars(select(PlanTask))}


def task(session, code: str, owner: str, supervisor: str | None, due: date, *, start: date | None = None,
         cycle: int | None = None, status: str = "open", progress: int = 0, title: str | None = None) -> PlanTask:
    staff = {s.staff_no: s for s in session.scalars(select(Staff))}
    t = PlanTask(code=code, title=title or f"任务{code}", level="系部", owner_id=staff[owner].id,
                 supervisor_id=staff[supervisor].id if supervisor else None, start=start, due=due,
                 cycle=cycle or cycle_of(due), progress=progress, status=status)
    session.add(t)
    session.commit()
    return t


def run(job_name: str, session, catalogue, day: date, at: time = time(8, 20),
        cycle: CycleSettings | None = None) -> str:
    ctx = JobContext(session=session, now=datetime.combine(day, at, TZ), catalogue=catalogue,
                     settings=replace(SETTINGS, cycle=cycle or CycleSettings()))
    result = JOBS[job_name].func(ctx)
    session.commit()
    assert isinstance(result, str) and "\n" not in result
    return result


def outbox(session, purpose: str | None = None) -> list[OutboxMessage]:
    session.expire_all()
    q = select(OutboxMessage).order_by(OutboxMessage.id)
    if purpose:
        q = q.where(OutboxMessage.purpose == purpose)
    return list(session.scalars(q))


def by_recipient(messages: list[OutboxMessage]) -> dict[str, OutboxMessage]:
    out = {m.recipient: m for m in messages}
    assert len(out) == len(messages), "one message per recipient"
    return out


# ---------------------------------------------------------------- import


def test_import_workbook_upserts_by_code(session, college, tmp_path):
    report = import_tasks(session, make_xlsx(tmp_path / "t.xlsx", GOOD))
    session.commit()
    assert report.counts == {"任务": {NEW: 3, UPDATED: 0, SAME: 0}}
    assert render("cli/import_report.txt", report=report) == "任务：新增 3，更新 0，未变 0"
    tasks = tasks_by_code(session)
    t = tasks["1.1"]
    assert (t.title, t.level) == ("完善计算机专业人才培养方案", "专业")
    assert (t.owner.staff_no, t.supervisor.staff_no) == ("T001", "T900")
    assert (t.start, t.due, t.cycle, t.status, t.progress) == (date(2026, 3, 1), date(2026, 6, 30), 2026, "open", 0)
    assert tasks["1.2"].start is None and tasks["1.2"].due == date(2026, 10, 15)
    # A January deadline belongs to the plan year before (its 事后 review is that January).
    assert (tasks["2.1"].due, tasks["2.1"].cycle) == (date(2027, 1, 10), 2026)


def test_reimport_is_a_no_op_and_keeps_progress(session, college, tmp_path):
    path = make_xlsx(tmp_path / "t.xlsx", GOOD)
    import_tasks(session, path)
    session.commit()
    tasks_by_code(session)["1.1"].progress = 40
    session.commit()
    report = import_tasks(session, path)
    session.commit()
    assert report.counts == {"任务": {NEW: 0, UPDATED: 0, SAME: 3}}
    assert session.scalar(select(func.count(PlanTask.id))) == 3
    assert tasks_by_code(session)["1.1"].progress == 40

    changed = [list(r) for r in GOOD]
    changed[1][6] = "2026-11-30"
    changed.append(["3.1", "新任务", None, "T003", None, None, "2026-12-01"])
    report = import_tasks(session, make_xlsx(tmp_path / "t2.xlsx", changed))
    session.commit()
    assert report.counts == {"任务": {NEW: 1, UPDATED: 1, SAME: 2}}
    tasks = tasks_by_code(session)
    assert tasks["1.2"].due == date(2026, 11, 30) and tasks["3.1"].supervisor_id is None


def test_optional_columns_absent_are_left_alone(session, college, tmp_path):
    import_tasks(session, make_xlsx(tmp_path / "t.xlsx", GOOD))
    session.commit()
    short = [["1.1", "完善计算机专业人才培养方案（修订）", "T001", "2026-07-15"]]
    headers = ["编号", "任务", "负责人工号", "截止日期"]
    report = import_tasks(session, make_xlsx(tmp_path / "s.xlsx", short, headers=headers))
    session.commit()
    assert report.counts["任务"][UPDATED] == 1
    t = tasks_by_code(session)["1.1"]
    assert t.supervisor.staff_no == "T900" and t.level == "专业" and t.start == date(2026, 3, 1)
    assert t.due == date(2026, 7, 15) and t.title.endswith("(修订)")  # NFKC, as the roster


def test_english_headers_title_row_and_sheet_alias(session, college, tmp_path):
    path = make_xlsx(tmp_path / "e.xlsx", GOOD, headers=ENGLISH, sheet="Tasks", title="2026年度要点工作任务分解表")
    report = import_tasks(session, path)
    session.commit()
    assert report.counts["任务"][NEW] == 3
    assert tasks_by_code(session)["2.1"].owner.staff_no == "T002"


def test_one_sheet_workbook_with_any_name_a_cycle_column_and_other_columns(session, college, tmp_path):
    rows = [["A-01", "党政工作要点落实", "学校", "T100", "T900", None, "2026-12-31", "2027年度", "郑源", "全年"]]
    headers = [*HEADERS, "年度", "负责人", "完成时限"]  # names and words beside the 工号 and dates: ignored
    path = make_xlsx(tmp_path / "one.xlsx", rows, headers=headers, sheet="Sheet1", extra_sheet=False)
    import_tasks(session, path)
    session.commit()
    assert tasks_by_code(session)["A-01"].cycle == 2027


def test_csv_file_and_folder(session, college, tmp_path):
    report = import_tasks(session, make_csv(tmp_path / "tasks" / "任务.csv", GOOD))
    session.commit()
    assert report.counts["任务"][NEW] == 3
    report = import_tasks(session, tmp_path / "tasks")  # the folder: its 任务.csv
    assert report.counts["任务"][SAME] == 3
    other = make_csv(tmp_path / "export.csv", [["9.9", "独立文件", None, "T001", None, None, "2026-05-01"]])
    assert import_tasks(session, other).counts["任务"][NEW] == 1


def test_errors_name_sheet_row_and_column_and_nothing_is_written(session, college, tmp_path):
    rows = [
        GOOD[0],
        ["1.2", "负责人不存在", None, "T999", "T900", None, "2026-06-30"],
        ["1.3", "督办人写了姓名", None, "T001", "吴军", None, "2026-06-30"],
        ["1.4", "没有截止日期", None, "T001", None, None, None],
        ["1.5", "日期不对", None, "T001", None, "2026-02-30", "下周"],
        ["1.1", "编号重复", None, "T001", None, None, "2026-06-30"],
        ["1.6", "开始晚于截止", None, "T001", None, "2026-07-01", "2026-06-30"],
        ["", "", None, "T001", None, None, "2026-06-30"],
        ["X" * 30, "编号太长", None, "T001", None, None, "2026-06-30"],
    ]
    with pytest.raises(TaskImportError) as info:
        import_tasks(session, make_xlsx(tmp_path / "bad.xlsx", rows))
    session.rollback()
    errors = worded(info.value.problems)
    assert errors == [
        "任务 第3行 负责人工号：工号“T999”不存在",
        "任务 第4行 督办人工号：工号“吴军”不存在（吴军的工号是T900）",
        "任务 第5行 截止日期：不能为空",
        "任务 第6行 开始日期：“2026-02-30”不是有效日期（如2026-06-30）",
        "任务 第6行 截止日期：“下周”不是有效日期（如2026-06-30）",
        "任务 第7行 编号：“1.1”与第2行重复",
        "任务 第8行 开始日期：开始日期2026-07-01晚于截止日期2026-06-30",
        "任务 第9行 编号：不能为空",
        "任务 第9行 任务：不能为空",
        f"任务 第10行 编号：“{'X' * 30}”超过24个字符",
    ]
    assert session.scalar(select(func.count(PlanTask.id))) == 0


def test_missing_required_column_and_wrong_files(session, college, tmp_path):
    path = make_xlsx(tmp_path / "m.xlsx", [["1.1", "任务", "T001"]], headers=["编号", "任务", "负责人工号"])
    with pytest.raises(TaskImportError) as info:
        import_tasks(session, path)
    assert worded(info.value.problems) == ["任务 第1行 截止日期：缺少必填列"]
    wb = openpyxl.Workbook()
    wb.active.title = "名单"
    wb.create_sheet("其他")
    wb.save(tmp_path / "none.xlsx")
    with pytest.raises(TaskImportError) as info:
        import_tasks(session, tmp_path / "none.xlsx")
    assert worded(info.value.problems) == ["工作簿 none.xlsx 中没有“任务”工作表"]
    (tmp_path / "t.txt").write_text("x", encoding="utf-8")
    with pytest.raises(TaskImportError) as info:
        import_tasks(session, tmp_path / "t.txt")
    assert worded(info.value.problems) == ["不支持的文件格式：t.txt（请使用 .xlsx 工作簿或 .csv 文件）"]
    with pytest.raises(TaskImportError) as info:
        import_tasks(session, make_xlsx(tmp_path / "empty.xlsx", []))
    assert worded(info.value.problems) == ["任务：工作表没有任何任务"]
    assert session.scalar(select(func.count(PlanTask.id))) == 0


def test_cli_tasks_import_all_or_nothing(tmp_path):
    from bot.cli.db import upgrade_database
    from models.db import make_engine, make_sessionmaker

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        small_college(s)
    engine.dispose()
    bad = run_bot(["tasks", "import", str(make_xlsx(tmp_path / "bad.xlsx", [*GOOD, ["9", "x", None, "T999", None,
                                                                                    None, "2026-01-01"]]))], url)
    assert bad.returncode == 1
    assert "任务表有 1 处错误，未导入任何内容" in bad.stderr and "任务 第5行 负责人工号" in bad.stderr
    good = run_bot(["tasks", "import", str(make_xlsx(tmp_path / "good.xlsx", GOOD))], url)
    assert good.returncode == 0, good.stderr
    assert "任务：新增 3，更新 0，未变 0" in good.stdout
    again = run_bot(["tasks", "import", str(tmp_path / "good.xlsx")], url)
    assert "任务：新增 0，更新 0，未变 3" in again.stdout


# ---------------------------------------------------------------- chat


@pytest.fixture
def svc(college, db_url, today, redis_url):
    return make_service(db_url, today, redis_url)


@pytest.fixture
def chat_tasks(session, college, today):
    """王芳 owns two tasks supervised by 吴军 (one overdue) and supervises one of 陈静's."""
    soon = task(session, "1.1", "T001", "T900", today + timedelta(days=10), progress=20, title="完善人才培养方案")
    late = task(session, "1.2", "T001", "T900", today - timedelta(days=2), title="组织技能竞赛")
    other = task(session, "2.1", "T002", "T001", today + timedelta(days=30), title="修订课程标准")
    return soon, late, other


def test_tasks_lists_own_and_supervised_with_numbers(svc, chat_tasks):
    soon, late, other = chat_tasks
    reply = say(svc, "wangfang", "任务")
    assert "【我负责的】" in reply and "【我督办的】" in reply
    assert f"#{late.id}〔1.2〕组织技能竞赛 · 进度0% · 截止2025-11-17【已逾期2天】" in reply
    assert f"#{soon.id}〔1.1〕完善人才培养方案 · 进度20% · 截止2025-11-29" in reply
    assert f"#{other.id}〔2.1〕修订课程标准" in reply and "（负责人：陈静）" in reply
    assert reply.index("1.2") < reply.index("1.1")  # soonest deadline first
    assert "【我督办的】" in say(svc, "wujun", "任务") and "【我负责的】" not in say(svc, "wujun", "任务")
    assert "没有未完成的计划任务" in say(svc, "zhoujie", "任务")
    assert "仅限教职工" in say(svc, "zhangsan", "任务")


def test_progress_by_number_or_code_with_audit(svc, session, chat_tasks):
    soon, _late, _other = chat_tasks
    reply = say(svc, "wangfang", f"进度 #{soon.id} 60")
    assert reply == f"已更新 #{soon.id}〔1.1〕进度：20% → 60%。截止 2025-11-29，还有10天。"
    assert "60% → 75%" in say(svc, "wangfang", "进度　１．１　７５％")  # 编号, full-width, percent sign
    session.expire_all()
    assert session.get(PlanTask, soon.id).progress == 75
    updates = session.scalars(select(PlanTaskUpdate).where(PlanTaskUpdate.task_id == soon.id)).all()
    assert [(u.kind, u.value) for u in updates] == [("progress", 60), ("progress", 75)]
    assert updates[0].actor.startswith("王芳(wangfang，控制台：")  # `say` is the console: it names the OS user
    audit = session.scalars(select(AuditLog).where(AuditLog.entity == "plan_task")).all()
    assert [(a.entity_key, a.old_value) for a in audit] == [("1.1", '{"progress": 20}'), ("1.1", '{"progress": 60}')]
    assert "完成 #" in say(svc, "wangfang", f"进度 #{soon.id} 100")


def test_progress_errors_are_clear_and_change_nothing(svc, session, chat_tasks):
    soon, _late, _other = chat_tasks
    assert "0–100" in say(svc, "wangfang", f"进度 #{soon.id} 150")
    assert "请写：进度 #12 60" in say(svc, "wangfang", "进度")
    assert "请写：进度 #12 60" in say(svc, "wangfang", f"进度 #{soon.id} 六十")
    assert "找不到你的任务“9999”" in say(svc, "wangfang", "进度 #9999 50")
    assert "的督办人，由负责人王芳更新进度" in say(svc, "wujun", f"进度 #{soon.id} 50")
    assert "负责人是王芳" in say(svc, "chenjing", f"进度 #{soon.id} 50")
    session.expire_all()
    assert session.get(PlanTask, soon.id).progress == 20
    assert session.scalar(select(func.count(PlanTaskUpdate.id))) == 0


def test_complete_tells_the_supervisor_once(svc, session, chat_tasks):
    _soon, late, _other = chat_tasks
    reply = say(svc, "wangfang", f"完成 #{late.id} 竞赛已举办，获奖名单已上报")
    assert "标记为完成" in reply and "已通知督办人吴军" in reply
    session.expire_all()
    t = session.get(PlanTask, late.id)
    assert (t.status, t.progress, t.note) == ("done", 100, "竞赛已举办，获奖名单已上报")
    assert t.done_at is not None
    [msg] = outbox(session)
    assert (msg.recipient, msg.purpose, msg.period_key) == ("wujun", "task_done", str(late.id))
    assert "王芳已完成你督办的任务" in msg.body and "说明：竞赛已举办，获奖名单已上报" in msg.body
    assert "已经完成" in say(svc, "wangfang", f"完成 #{late.id}")
    assert "已经完成" in say(svc, "wangfang", f"进度 #{late.id} 50")
    assert len(outbox(session)) == 1
    assert f"#{late.id}" not in say(svc, "wangfang", "任务").split("【我督办的】")[0]


def test_achievement_and_detail(svc, session, chat_tasks):
    soon, _late, _other = chat_tasks
    reply = say(svc, "wangfang", f"达成度 #{soon.id} 80 基本达成")
    assert reply == f"已记录 #{soon.id}〔1.1〕达成度 80%，说明：基本达成。"
    assert "原为 80%" in say(svc, "wangfang", "达成度 1.1 90")
    assert "0–100" in say(svc, "wangfang", "达成度 1.1 101")
    assert "只有负责人可以报告达成度" in say(svc, "chenjing", "达成度 1.1 90")
    session.expire_all()
    assert session.get(PlanTask, soon.id).achievement == 90
    detail = say(svc, "wujun", f"任务 #{soon.id}")
    assert "负责人：王芳　督办人：吴军" in detail and "达成度：90%" in detail and "进行中，进度20%" in detail
    assert "找不到" in say(svc, "zhoujie", f"任务 #{soon.id}")  # neither owner nor supervisor


def test_number_prefers_id_and_bare_token_prefers_code(session, college, today):
    a = task(session, "1.1", "T001", None, today)
    b = task(session, str(a.id), "T001", None, today)  # 编号 equal to the other task's id
    assert find_task(session, f"#{a.id}", a.owner_id).id == a.id
    assert find_task(session, str(a.id), a.owner_id).id == b.id
    assert find_task(session, "#1.1", a.owner_id).id == a.id
    assert find_task(session, "#", a.owner_id) is None


# ---------------------------------------------------------------- task_deadlines


DUE = date(2026, 5, 20)  # a Wednesday


def test_deadline_reminders_three_days_before_and_on_the_day_only(session, college, catalogue):
    t = task(session, "1.1", "T001", "T900", DUE)
    assert "no task due" in run("task_deadlines", session, catalogue, DUE - timedelta(days=4))
    run("task_deadlines", session, catalogue, DUE - timedelta(days=3))
    [m] = outbox(session)
    assert (m.recipient, m.purpose, m.period_key) == ("wangfang", "task_deadlines", "2026-05-17")
    assert "【任务提醒】" in m.body and "3天后到期" in m.body and f"#{t.id}〔1.1〕" in m.body
    run("task_deadlines", session, catalogue, DUE - timedelta(days=3))  # a rerun sends nothing new
    run("task_deadlines", session, catalogue, DUE - timedelta(days=2))
    run("task_deadlines", session, catalogue, DUE - timedelta(days=1))
    assert len(outbox(session)) == 1
    run("task_deadlines", session, catalogue, DUE)
    msgs = outbox(session)
    assert len(msgs) == 2 and msgs[1].recipient == "wangfang" and "今天到期" in msgs[1].body
    assert "督办通知" not in msgs[1].body


def test_overdue_sends_supervision_to_supervisor_and_owner_weekly_until_done(session, college, catalogue):
    t = task(session, "1.1", "T001", "T900", DUE)
    result = run("task_deadlines", session, catalogue, DUE + timedelta(days=1))
    assert "督办通知" in result
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wujun", "wangfang"}
    assert msgs["wujun"].body.startswith("【督办通知】吴军老师") and "（负责人：王芳）" in msgs["wujun"].body
    assert "你督办的任务已逾期" in msgs["wujun"].body and "【已逾期1天】" in msgs["wujun"].body
    assert msgs["wangfang"].body.startswith("【督办通知】王芳老师") and "你负责的任务已逾期" in msgs["wangfang"].body
    run("task_deadlines", session, catalogue, DUE + timedelta(days=1))  # rerun the same day
    for days in range(2, 8):
        run("task_deadlines", session, catalogue, DUE + timedelta(days=days))
    assert len(outbox(session)) == 2
    run("task_deadlines", session, catalogue, DUE + timedelta(days=8))  # a week later
    again = outbox(session)[2:]
    assert {m.recipient for m in again} == {"wujun", "wangfang"} and all("【已逾期8天】" in m.body for m in again)
    t = session.get(PlanTask, t.id)
    t.status = "done"
    session.commit()
    run("task_deadlines", session, catalogue, DUE + timedelta(days=15))
    assert len(outbox(session)) == 4


def test_one_message_per_person_bundles_and_fits_2048_bytes(session, college, catalogue):
    for i in range(60):
        task(session, f"9.{i}", "T001", "T900", DUE, title="建设省级高水平专业群的年度任务（含实训基地与课程资源）")
    task(session, "8.1", "T001", "T900", DUE + timedelta(days=1))  # due today
    task(session, "8.2", "T001", "T900", DUE + timedelta(days=4))  # in three days
    run("task_deadlines", session, catalogue, DUE + timedelta(days=1))
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wangfang", "wujun"}
    for m in msgs.values():
        assert len(m.body.encode()) <= 2048 and "……另有" in m.body
    # Every section keeps its first items: today's and the coming deadline are not crowded out.
    assert "今天到期：\n" in msgs["wangfang"].body and "〔8.1〕" in msgs["wangfang"].body
    assert "3天后到期：\n" in msgs["wangfang"].body and "〔8.2〕" in msgs["wangfang"].body


def test_owner_without_wecom_account_is_skipped_and_counted(session, college, catalogue):
    owner = session.scalar(select(Staff).where(Staff.staff_no == "T002"))
    owner.wecom_userid = None
    session.commit()
    task(session, "1.1", "T002", "T900", DUE)
    result = run("task_deadlines", session, catalogue, DUE + timedelta(days=1))
    assert "1 without a WeCom account" in result
    assert [m.recipient for m in outbox(session)] == ["wujun"]


def test_reminder_days_are_configurable(session, college, catalogue):
    cycle = CycleSettings(remind_days_before=5)
    task(session, "1.1", "T001", "T900", DUE)
    run("task_deadlines", session, catalogue, DUE - timedelta(days=6), cycle=cycle)
    assert outbox(session) == []
    run("task_deadlines", session, catalogue, DUE - timedelta(days=5), cycle=cycle)
    assert "5天后到期" in outbox(session)[0].body
    run("task_deadlines", session, catalogue, DUE - timedelta(days=3), cycle=cycle)
    assert len(outbox(session)) == 1


# The scheduler was down on the day a rule fires: the job, run later, sends what is owed, once,
# and the next one counts from what was actually queued.


def at(day: date, clock: time = time(8, 20)) -> datetime:
    return datetime.combine(day, clock, TZ)


def test_a_task_first_seen_two_days_overdue_is_supervised_now_then_a_week_after_that(
        session, college, db_url, redis_url):
    t = task(session, "1.1", "T001", "T900", DUE)
    svc = make_service(db_url, DUE + timedelta(days=2), redis_url)
    # Nothing ran on DUE + 1, the first overdue day; the scheduler's next run is a day late.
    first = run_job(svc, "task_deadlines", at(DUE + timedelta(days=2)))
    assert first.status == "ok" and "督办通知" in first.result
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wujun", "wangfang"}
    assert msgs["wujun"].body.startswith("【督办通知】吴军老师") and "【已逾期2天】" in msgs["wujun"].body
    assert msgs["wangfang"].body.startswith("【督办通知】王芳老师") and "【已逾期2天】" in msgs["wangfang"].body
    run_job(svc, "task_deadlines", at(DUE + timedelta(days=2), time(15, 0)))  # twice on one day
    for days in range(3, 9):  # day 8 is not a 督办 day for this task: its first one went out on day 2
        run_job(svc, "task_deadlines", at(DUE + timedelta(days=days)))
    assert len(outbox(session)) == 2
    run_job(svc, "task_deadlines", at(DUE + timedelta(days=9)))  # a week after the last one
    again = outbox(session)[2:]
    assert {m.recipient for m in again} == {"wujun", "wangfang"}
    assert all("【已逾期9天】" in m.body and m.period_key == "2026-05-29" for m in again)
    run_job(svc, "task_deadlines", at(DUE + timedelta(days=10)))
    assert len(outbox(session)) == 4
    # The task's history says when 督办 went out, and to whom.
    detail = say(svc, "wujun", f"任务 #{t.id}")
    assert "05-29 督办通知：发给吴军" in detail and "05-22 督办通知：发给王芳" in detail


def test_a_task_imported_overdue_after_the_days_run_is_supervised_to_each_person_once_and_weekly(
        session, college, catalogue):
    day = DUE + timedelta(days=10)
    task(session, "1.1", "T001", None, day)
    assert "1 reminders" in run("task_deadlines", session, catalogue, day)  # 王芳: due today
    late = task(session, "1.2", "T001", "T900", DUE)  # imported at 11:00, ten days overdue
    run("task_deadlines", session, catalogue, day, time(11, 0))
    [wu] = outbox(session)[1:]
    assert wu.recipient == "wujun" and f"#{late.id}〔1.2〕" in wu.body and "【已逾期10天】" in wu.body
    # 王芳 had her message of the day already: her 督办通知 for 1.2 comes on the next run.
    run("task_deadlines", session, catalogue, day + timedelta(days=1))
    [wang] = outbox(session)[2:]
    assert wang.recipient == "wangfang" and "你负责的任务已逾期" in wang.body
    assert f"#{late.id}〔1.2〕" in wang.body and "【已逾期11天】" in wang.body
    for days in range(2, 7):
        run("task_deadlines", session, catalogue, day + timedelta(days=days))
    assert len(outbox(session)) == 3
    # Each person's next one comes a week after their last.
    run("task_deadlines", session, catalogue, day + timedelta(days=7))
    assert [m.recipient for m in outbox(session)[3:]] == ["wujun"]
    run("task_deadlines", session, catalogue, day + timedelta(days=8))
    assert [m.recipient for m in outbox(session)[3:]] == ["wujun", "wangfang"]


def test_a_missed_early_reminder_goes_out_on_a_later_day_before_the_due_day_once(session, college, catalogue):
    a = task(session, "1.1", "T001", "T900", DUE)
    b = task(session, "1.2", "T001", "T900", DUE + timedelta(days=1))
    # Nothing ran on DUE - 3 (1.1's reminder day) nor on DUE - 2 (1.2's).
    run("task_deadlines", session, catalogue, DUE - timedelta(days=1))
    [m] = outbox(session)
    assert m.recipient == "wangfang" and m.body.startswith("【任务提醒】")
    assert f"1天后到期：\n#{a.id}〔1.1〕" in m.body and f"2天后到期：\n#{b.id}〔1.2〕" in m.body
    run("task_deadlines", session, catalogue, DUE - timedelta(days=1), time(17, 0))
    run("task_deadlines", session, catalogue, DUE)
    [today] = outbox(session)[1:]
    assert f"今天到期：\n#{a.id}〔1.1〕" in today.body and "天后到期" not in today.body
    # A task first seen on its due day gets the due-day reminder only, one past it the 督办通知.
    c = task(session, "1.3", "T002", None, DUE + timedelta(days=1))
    d = task(session, "1.4", "T002", None, DUE)
    run("task_deadlines", session, catalogue, DUE + timedelta(days=1))
    chen = by_recipient(outbox(session)[2:])["chenjing"].body
    assert f"今天到期：\n#{c.id}〔1.3〕" in chen and f"#{d.id}〔1.4〕" in chen.split("你负责的任务已逾期")[1]
    assert "天后到期" not in chen


# ---------------------------------------------------------------- plan_documents (table 15)


def record_document(session, code: str, student_name: str, period_key: str, value: float = 1.0) -> None:
    st = session.scalar(select(Student).where(Student.name == student_name))
    session.add(ScoreEntry(point_code=code, student_id=st.id, period_key=period_key, semester_key="2025-2026-1",
                           occurred_on=date(2025, 9, 2), value=value, batch_id=0))
    session.commit()


def test_plan_documents_remind_recorders_of_the_students_missing_them(session, college, catalogue):
    record_document(session, "A01", "张三", "2025-2026")
    record_document(session, "B01", "李四", "2025-2026", value=0.0)  # 未提交 counts as missing
    result = run("plan_documents", session, catalogue, date(2025, 9, 8), time(9, 10))
    msgs = by_recipient(outbox(session, "plan_documents"))
    assert "reminders queued" in result
    # 班主任 for 学业计划 and 个人发展规划; the department's 教研室 and 学工办 for 职业生涯规划.
    assert set(msgs) == {"wangfang", "heping", "xuhong", "zhoujie", "sunli"}
    wang = msgs["wangfang"].body
    assert "学业计划：\n· 计算机2301 缺 4/5 人：李四、王五、刘洋、刘洋" in wang
    assert "个人发展规划：\n· 计算机2301 缺 5/5 人：张三、李四" in wang
    assert "职业生涯规划" not in wang
    zhou = msgs["zhoujie"].body
    assert "职业生涯规划" in zhou and "计算机2301" in zhou and "软件技术2301" in zhou and "会计2301" not in zhou
    assert msgs["wangfang"].period_key == "2025-W37"
    run("plan_documents", session, catalogue, date(2025, 9, 10), time(9, 10))  # the same week
    assert len(outbox(session)) == 5
    run("plan_documents", session, catalogue, date(2025, 9, 15), time(9, 10))  # next week
    assert len(outbox(session)) == 10


def test_plan_documents_windows(session, college, catalogue):
    run("plan_documents", session, catalogue, date(2025, 10, 8), time(9, 10))  # week 6: only 职业生涯规划
    assert {m.recipient for m in outbox(session)} == {"zhoujie", "sunli"}
    assert "not in a plan-document window" in run("plan_documents", session, catalogue, date(2026, 3, 10))
    assert "not in a plan-document window" in run("plan_documents", session, catalogue, date(2026, 1, 25))


def test_plan_documents_names_at_most_ten_per_class(session, college, catalogue):
    for i in range(15):
        session.add(Student(student_no=f"20230109{i:02d}", name=f"学生{i:02d}", class_id=college.cs.id))
    session.commit()
    for no in ("2023010101", "2023010102", "2023010103", "2023010104", "2023010105"):
        st = session.scalar(select(Student).where(Student.student_no == no))
        for code in ("A01", "B01"):
            session.add(ScoreEntry(point_code=code, student_id=st.id, period_key="2025-2026", semester_key="x",
                                   occurred_on=date(2025, 9, 2), value=1, batch_id=0))
    session.commit()
    run("plan_documents", session, catalogue, date(2025, 9, 1), time(9, 10))
    body = by_recipient(outbox(session))["wangfang"].body
    assert "计算机2301 缺 15/20 人：学生00、学生01" in body and "学生09 等" in body and "学生10" not in body


# ---------------------------------------------------------------- the table 9 cycle


@pytest.fixture
def cycle_tasks(session, college):
    """Plan year 2026: 王芳 owns two tasks (吴军 supervises), 陈静 one (王芳 supervises)."""
    return (task(session, "1.1", "T001", "T900", date(2026, 6, 30)),
            task(session, "1.2", "T001", "T900", date(2026, 10, 15), start=date(2026, 9, 1)),
            task(session, "2.1", "T002", "T001", date(2026, 12, 20)))


def test_plan_submission_in_march_with_a_last_call(session, cycle_tasks, catalogue):
    assert "not in the 事前 window" in run("plan_submission", session, catalogue, date(2026, 2, 28))
    run("plan_submission", session, catalogue, date(2026, 3, 1), time(9, 20))
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wangfang", "chenjing", "wujun"}
    assert all(m.purpose == "plan_submission" and m.period_key == "2026-start" for m in msgs.values())
    wang = msgs["wangfang"].body
    assert "3月31日" in wang and "提交你的年度工作计划" in wang and "〔1.1〕" in wang and "〔1.2〕" in wang
    assert "审核以下负责人" in wang and "陈静（1 项任务）" in wang
    assert "王芳（2 项任务）" in msgs["wujun"].body and "提交你的年度工作计划" not in msgs["wujun"].body
    run("plan_submission", session, catalogue, date(2026, 3, 2))
    assert len(outbox(session)) == 3
    run("plan_submission", session, catalogue, date(2026, 3, 27))
    last = outbox(session)[3:]
    assert len(last) == 3 and all(m.period_key == "2026-last" and "最后提醒" in m.body for m in last)
    run("plan_submission", session, catalogue, date(2026, 3, 31))
    assert "not in the 事前 window" in run("plan_submission", session, catalogue, date(2026, 4, 1))
    assert len(outbox(session)) == 6


def test_progress_checkin_monthly_may_to_october(session, cycle_tasks, catalogue):
    first, later, _other = cycle_tasks
    assert "not a check-in day" in run("progress_checkin", session, catalogue, date(2026, 4, 5))
    assert "not a check-in day" in run("progress_checkin", session, catalogue, date(2026, 5, 4))
    run("progress_checkin", session, catalogue, date(2026, 5, 5), time(9, 40))
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wangfang", "chenjing"}
    wang = msgs["wangfang"].body
    assert wang.startswith("【事中·进度诊断】") and f"进度 #{first.id} 60" in wang
    assert "〔1.2〕" not in wang  # starts in September
    assert msgs["wangfang"].period_key == "2026-05"
    run("progress_checkin", session, catalogue, date(2026, 5, 20))
    assert len(outbox(session)) == 2
    session.get(PlanTask, first.id).status = "done"
    session.commit()
    run("progress_checkin", session, catalogue, date(2026, 9, 5))
    sept = by_recipient(outbox(session)[2:])
    assert "〔1.2〕" in sept["wangfang"].body and "〔1.1〕" not in sept["wangfang"].body
    assert "not a check-in day" in run("progress_checkin", session, catalogue, date(2026, 11, 5))


def test_outcome_review_in_january_then_carry_over(session, cycle_tasks, catalogue):
    first, later, other = cycle_tasks
    first.status = "done"
    session.commit()
    assert "not in the 事后 window" in run("outcome_review", session, catalogue, date(2027, 1, 4))
    run("outcome_review", session, catalogue, date(2027, 1, 5), time(9, 50))
    msgs = by_recipient(outbox(session))
    assert set(msgs) == {"wangfang", "chenjing"}
    assert f"达成度 #{first.id}" in msgs["wangfang"].body and "〔1.2〕" in msgs["wangfang"].body
    assert msgs["wangfang"].period_key == "2026-start"
    # 王芳 reports both of hers; the last call goes to 陈静 only.
    report_achievement(session, session.get(PlanTask, first.id), 95, "王芳(wangfang)")
    report_achievement(session, session.get(PlanTask, later.id), 60, "王芳(wangfang)")
    session.commit()
    run("outcome_review", session, catalogue, date(2027, 1, 20))
    last = outbox(session)[2:]
    assert [m.recipient for m in last] == ["chenjing"] and "最后提醒" in last[0].body

    result = run("outcome_review", session, catalogue, date(2027, 1, 31))
    assert "2 tasks carried into the 整改清单" in result
    tasks = tasks_by_code(session)
    assert tasks["1.1"].status == "done" and "1.1-整改" not in tasks
    for code in ("1.2", "2.1"):
        old, new = tasks[code], tasks[f"{code}-整改"]
        assert old.status == "carried"
        assert (new.carried_from_id, new.cycle, new.due, new.status) == (old.id, 2027, date(2027, 6, 30), "open")
        assert (new.owner_id, new.supervisor_id) == (old.owner_id, old.supervisor_id)
    notices = by_recipient(outbox(session, "rectification"))
    assert set(notices) == {"wangfang", "wujun", "chenjing"}
    assert "你负责的" in notices["wangfang"].body and "你督办的" in notices["wangfang"].body
    assert "1.2-整改" in notices["wujun"].body and "2.1-整改" not in notices["wujun"].body

    count = len(outbox(session))
    assert "0 tasks carried" in run("outcome_review", session, catalogue, date(2027, 2, 1))
    assert carry_over(session, 2026, note=carried_note) == []
    assert len(outbox(session)) == count
    assert session.scalar(select(func.count(PlanTask.id))) == 5
    assert [t.code for t in rectification_list(session, 2026)] == ["1.2-整改", "2.1-整改"]
    assert "not in the 事后 window" in run("outcome_review", session, catalogue, date(2027, 2, 10))


def test_plan_cycle_steps_missed_on_their_day_go_out_on_the_next_run_inside_their_window(
        session, cycle_tasks, catalogue):
    def queued(job_name: str, day: date) -> list[OutboxMessage]:
        before = len(outbox(session))
        run(job_name, session, catalogue, day)
        return outbox(session)[before:]

    # 事前: nothing ran from 1 to 3 March; the 4 March run asks for the plans, the next day adds nothing.
    assert {(m.recipient, m.period_key) for m in queued("plan_submission", date(2026, 3, 4))} == {
        ("wangfang", "2026-start"), ("chenjing", "2026-start"), ("wujun", "2026-start")}
    assert queued("plan_submission", date(2026, 3, 5)) == []
    # 事中: the check-in day (the 5th) missed; the 8th sends May's, the 9th nothing, June's on time.
    assert {(m.recipient, m.period_key) for m in queued("progress_checkin", date(2026, 5, 8))} == {
        ("wangfang", "2026-05"), ("chenjing", "2026-05")}
    assert queued("progress_checkin", date(2026, 5, 9)) == []
    assert len(queued("progress_checkin", date(2026, 6, 5))) == 2
    # 事后: the request (5 January) made up on the 9th; the carry-over (31 January) on 3 February.
    assert {m.period_key for m in queued("outcome_review", date(2027, 1, 9))} == {"2026-start"}
    assert queued("outcome_review", date(2027, 1, 10)) == []
    carried = queued("outcome_review", date(2027, 2, 3))
    assert {m.purpose for m in carried} == {"rectification"} and len(carried) == 3
    assert "1.1-整改" in tasks_by_code(session)
    assert queued("outcome_review", date(2027, 2, 4)) == []


def test_a_plan_submission_missed_until_the_last_call_sends_the_last_call_only(session, cycle_tasks, catalogue):
    run("plan_submission", session, catalogue, date(2026, 3, 28))
    assert {m.period_key for m in outbox(session)} == {"2026-last"} and len(outbox(session)) == 3
    run("plan_submission", session, catalogue, date(2026, 3, 29))
    assert len(outbox(session)) == 3


def test_plan_documents_missed_on_monday_go_out_later_that_week(session, college, catalogue):
    run("plan_documents", session, catalogue, date(2025, 9, 10), time(9, 10))  # a Wednesday
    assert len(outbox(session)) == 5 and {m.period_key for m in outbox(session)} == {"2025-W37"}
    run("plan_documents", session, catalogue, date(2025, 9, 11), time(9, 10))
    assert len(outbox(session)) == 5
    run("plan_documents", session, catalogue, date(2025, 9, 15), time(9, 10))
    assert len(outbox(session)) == 10


def test_carried_task_is_closed_in_chat_and_a_second_carry_gets_a_new_code(svc, session, today):
    old = task(session, "1.1", "T001", "T900", date(2024, 12, 1))
    [new] = carry_over(session, 2024, date(2025, 6, 30), note=carried_note)
    session.commit()
    assert new.code == "1.1-整改"
    reply = say(svc, "wangfang", f"进度 #{old.id} 50")
    assert f"请改用 #{new.id}〔1.1-整改〕" in reply
    [newer] = carry_over(session, 2025, date(2026, 6, 30), note=carried_note)  # still unfinished a year later
    session.commit()
    assert newer.code == "1.1-整改2026" and newer.carried_from_id == new.id


# ---------------------------------------------------------------- settings and helpers


def test_settings_from_environment():
    settings = load_settings(environ={"SECRET_KEY": "t", "TASK_DEADLINES_CRON": "mon-fri 07:50",
                                      "PLAN_REVIEW_DEADLINE": "04-15", "PROGRESS_CHECKIN_MONTHS": "4-6,9",
                                      "CARRY_OVER_ON": "01-25", "OUTCOME_REVIEW_LAST_CALL": "01-18",
                                      "TASK_OVERDUE_EVERY_DAYS": "3", "OUTCOME_REVIEW_CRON": "09:50"})
    s = settings.cycle
    assert s.plan_review_deadline == (4, 15)
    assert s.checkin_months == (4, 5, 6, 9) and s.carry_over_on == (1, 25) and s.overdue_every_days == 3
    jobs = scheduled_jobs(settings)
    assert jobs["task_deadlines"].cron == {"day_of_week": "mon-fri", "hour": "7", "minute": "50"}
    assert jobs["outcome_review"].cron == {"hour": "9", "minute": "50", "month": "1,2"}  # 01-05 to 01-25 + 7 days
    assert jobs["progress_checkin"].cron["month"] == "4,5,6,9"
    for bad in ({"PLAN_REVIEW_DEADLINE": "31-03"}, {"TASK_DEADLINES_CRON": "8h"}, {"PROGRESS_CHECKIN_DAY": "31"},
                {"PROGRESS_CHECKIN_MONTHS": "10-5"}, {"PLAN_SUBMISSION_START": "04-01"}):
        with pytest.raises(ValueError):
            load_settings(environ={"SECRET_KEY": "t", **bad})
    assert load_settings(environ={"SECRET_KEY": "t"}).cycle == CycleSettings()


def test_jobs_are_registered_with_times_off_the_hour():
    for name in ("task_deadlines", "plan_documents", "plan_submission", "progress_checkin", "outcome_review"):
        job = JOBS[name]
        assert job.cron["minute"] not in ("0", "30"), name
    assert JOBS["plan_submission"].cron == {"hour": "9", "minute": "25", "month": "3"}
    assert JOBS["progress_checkin"].cron["month"] == "5,6,7,8,9,10"


def test_fit_sections_keeps_as_many_items_as_fit():
    def render(sections, more):
        lines = [x for items in sections.values() for x in items]
        return "\n".join(lines) + (f"\n另有{more}项" if more else "")

    text = fit_sections(render, {"a": ["一" * 100] * 5, "b": ["二" * 100] * 5}, limit=1500)
    assert len(text.encode()) <= 1500 and text.endswith("另有6项")
    assert text.startswith("一" * 100 + "\n" + "一" * 100 + "\n" + "二" * 100)  # two of each, in order
    assert fit_sections(render, {"a": ["x"]}, limit=10) == "x"

