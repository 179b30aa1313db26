"""Excel in and out: `scores import`, `export cards|report`, and `导出 <班级>` with its signed link.

Everything runs on the real database through the real click commands, chat pipeline and
Flask routes; workbooks are read back with openpyxl and compared with the chat card.
"""

from __future__ import annotations

import io
import json
import time
from datetime import date

import openpyxl
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select

from bot import create_app
from core.config import load_settings
from core.render import render
from handlers.export import SALT, link_max_age
from models.authz import load_actor
from models.cards import student_card, student_cards
from models.io.scores_import import ScoreImportError, import_scores, place_dated
from models.periods import PeriodError
from models.schema import AuditLog, RecordingBatch, SchoolClass, ScoreEntry, Student
from models.scores import load_calendar
from tests.fakes.chat import live_entries as live
from tests.fakes.chat import make_service, say
from tests.fakes.chat import student_id as sid


@pytest.fixture
def svc(college, db_url, today, redis_url):
    return make_service(db_url, today, redis_url)


@pytest.fixture
def app(svc):
    return create_app(service=svc)


def cli(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


def workbook(path, rows, headers=("学号", "采分点", "值"), sheet="采分"):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    ws.append(list(headers))
    for row in rows:
        ws.append(list(row))
    wb.save(path)
    return path


def count(session, model):
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model))


# ───────────────────────────── scores import ─────────────────────────────

def test_import_writes_one_batch_with_audit_and_the_chat_card_shows_it(app, svc, session, tmp_path):
    path = workbook(tmp_path / "学分绩.xlsx", [
        ("2023010101", None, "学期学分绩", 88),
        ("2023010102", None, "学分绩", "92.5"),
        (None, "计算机2301", "自学能力", 80),
    ], headers=("学号", "班级编号", "采分点", "值"))
    result = cli(app, "scores", "import", str(path), "--as", "T001")
    assert result.exit_code == 0, result.output
    assert "导入 3 条" in result.output and "学期学分绩 2" in result.output

    rows = live(session)
    assert [(r.point_code, r.value, r.source, r.source_msg) for r in rows] == [
        ("A09", 88.0, "import", "学分绩.xlsx"), ("A09", 92.5, "import", "学分绩.xlsx"),
        ("KA04", 80.0, "import", "学分绩.xlsx")]
    assert len({r.batch_id for r in rows}) == 1
    batch = session.get(RecordingBatch, rows[0].batch_id)
    assert batch.source == "import" and batch.recorder_id is not None
    audits = session.scalars(select(AuditLog).where(AuditLog.action == "record")).all()
    assert len(audits) == 3 and {a.source_msg for a in audits} == {"学分绩.xlsx"}
    assert all(r.period_key == "2025-2026-1" for r in rows)  # 学期末: the semester of today

    assert "学期学分绩 88" in say(svc, "zhangsan", "储值卡")
    assert "已撤销 3 条" in say(svc, "wangfang", "撤销")  # the import is one recording: undone as one


def test_an_import_extends_the_audit_chain_chat_started(app, svc, session, tmp_path):
    """Chat and the import write through the one write path: the import's value supersedes the chat
    value, and its audit row names the entry it replaces, as a second chat message's would."""
    say(svc, "wangfang", "全勤率 张三 80")
    [chat_entry] = live(session, "A03")
    path = workbook(tmp_path / "考勤.xlsx", [("2023010101", "全勤率", 95)])
    assert cli(app, "scores", "import", str(path), "--as", "T001").exit_code == 0
    session.expire_all()
    imported = live(session, "A03")[-1]  # the newest entry of the period is the value
    assert imported.value == 95.0 and imported.source == "import"
    audits = session.scalars(select(AuditLog).where(AuditLog.action == "record").order_by(AuditLog.id)).all()
    assert json.loads(audits[-1].old_value) == {"entry": chat_entry.id, "value": 80.0}
    assert json.loads(audits[-1].new_value) == {"entry": imported.id, "value": 95.0}
    batch = session.get(RecordingBatch, imported.batch_id)
    assert batch.text.startswith("import 考勤.xlsx rows=1 sha256=")


def test_bad_rows_write_nothing_and_each_error_names_row_and_column(app, session, tmp_path):
    path = workbook(tmp_path / "bad.xlsx", [
        ("2023010101", "学期学分绩", 88),      # row 2: fine
        ("2099999999", "学期学分绩", 70),      # row 3: unknown 学号
        ("2023010102", "学期学分绩", 120),     # row 4: out of range
        ("2023010103", "不存在的点", 80),       # row 5: unknown point
        ("2023010103", "学期学分绩", None),    # row 6: empty value
        ("2023010101", "学期学分绩", 90),      # row 7: same student, point and period as row 2
        ("2023010103", "全勤率", "abc", "2025/11/18"),  # row 8: not a number
        ("2023010103", "全勤率", 95, "明天"),   # row 9: not a date
    ], headers=("学号", "采分点", "值", "日期"))
    result = cli(app, "scores", "import", str(path), "--as", "T001")
    assert result.exit_code == 1
    out = result.output
    assert "8 处错误" not in out and "未导入任何内容" in out
    for expected in ("采分 第3行 学号：找不到学号“2099999999”",
                     "采分 第4行 值：学期学分绩应在 0–100 之间",
                     "采分 第5行 采分点：未知采分点“不存在的点”",
                     "采分 第6行 值：不能为空",
                     "采分 第7行 采分点：与第2行重复",
                     "采分 第8行 值：“abc”不是数值",
                     "采分 第9行 日期：“明天”不是有效日期"):
        assert expected in out, (expected, out)
    assert out.index("第3行") < out.index("第4行") < out.index("第9行")
    assert count(session, ScoreEntry) == 0 and count(session, RecordingBatch) == 0
    assert count(session, AuditLog) == 0


def test_missing_columns_and_sheet_are_named(app, session, tmp_path):
    result = cli(app, "scores", "import", str(workbook(tmp_path / "a.xlsx", [("张三", 1)], ("姓名", "值"))),
                 "--as", "T001")
    assert result.exit_code == 1
    assert "采分 第1行 学号或班级编号：缺少必填列" in result.output
    assert "采分 第1行 采分点：缺少必填列" in result.output
    result = cli(app, "scores", "import", str(workbook(tmp_path / "b.xlsx", [], sheet="Sheet1")), "--as", "T001")
    assert result.exit_code == 1 and "没有名为“采分”的工作表（现有：Sheet1）" in result.output
    assert count(session, ScoreEntry) == 0


def test_unauthorised_rows_and_unknown_importer_write_nothing(app, session, tmp_path):
    path = workbook(tmp_path / "x.xlsx", [
        ("2023010101", "学期学分绩", 88),   # 王芳's own class: fine
        ("2023020101", "学期学分绩", 75),   # 赵六 is in 软件2301, not hers
        ("2023010101", "体能测试", 80),     # 体能测试 is recorded by the 体育老师
    ])
    result = cli(app, "scores", "import", str(path), "--as", "T001")
    assert result.exit_code == 1
    assert "采分 第3行 采分点：王芳不能为软件技术2301录入学期学分绩（采分主体：班主任）" in result.output
    assert "采分 第4行 采分点：王芳不能为计算机2301录入体能测试（采分主体：体育老师）" in result.output
    assert count(session, ScoreEntry) == 0

    unknown = cli(app, "scores", "import", str(path), "--as", "T999")
    assert unknown.exit_code == 1 and "找不到该工号" in unknown.output
    student = cli(app, "scores", "import", str(path), "--as", "2023010101")
    assert student.exit_code == 1 and "不是教职工" in student.output
    assert count(session, ScoreEntry) == 0

    pe = cli(app, "scores", "import", str(workbook(tmp_path / "pe.xlsx", [
        ("2023010101", "体测", 80), ("2023020101", "体能测试", 85)])), "--as", "zhaoqiang")
    assert pe.exit_code == 0, pe.output
    assert sorted(e.value for e in live(session, "B08")) == [80.0, 85.0]


def test_reimport_replaces_values_and_count_totals_never_double(app, svc, session, tmp_path):
    first = workbook(tmp_path / "综测.xlsx", [
        ("2023010101", "综合素质测评", 80), ("2023010101", "违纪频次", 2), ("2023010102", "违纪频次", 1)])
    assert cli(app, "scores", "import", str(first), "--as", "T004").exit_code == 0  # 孙丽, 学工办
    assert "已记录" in say(svc, "sunli", "违纪频次 张三")  # one more 违纪 recorded in chat

    again = cli(app, "scores", "import", str(first), "--as", "T004")
    assert again.exit_code == 0 and "替换了之前导入的 2 条" in again.output

    def totals(code):
        out = {}
        for e in live(session, code):
            out[e.student_id] = out.get(e.student_id, 0) + e.value
        return out

    zhang, li = sid(session, "张三"), sid(session, "李四")
    assert totals("B13") == {zhang: 3.0, li: 1.0}  # 2 imported + 1 in chat, not 2 + 2 + 1
    assert [e.value for e in live(session, "B07")][-1] == 80.0

    corrected = workbook(tmp_path / "综测2.xlsx", [
        ("2023010101", "综合素质测评", 85), ("2023010101", "违纪频次", 0), ("2023010102", "违纪频次", 3)])
    result = cli(app, "scores", "import", str(corrected), "--as", "T004")
    assert result.exit_code == 0 and "1 行次数为 0" in result.output
    assert totals("B13") == {zhang: 1.0, li: 3.0}  # the chat count stays; imported totals replaced
    card, _ = student_card(session, svc.catalogue, load_calendar(session), zhang, svc.today())
    [line] = [ln for d in card.domains for ln in d.lines if ln.point.code == "B07"]
    assert line.value.value == 85.0
    revoked = session.scalars(select(AuditLog).where(AuditLog.action == "revoke")).all()
    assert len(revoked) == 4 and all(a.actor.startswith("孙丽") for a in revoked)


def test_observations_are_per_day_and_reimport_does_not_double_them(app, session, tmp_path):
    path = workbook(tmp_path / "作业.xlsx", [
        ("2023010101", "作业完成率", 80, "2025-11-17"),
        ("2023010101", "作业完成率", 100, "2025-11-18"),
        ("2023010102", "作业完成率", "90%", "2025-11-18"),
    ], headers=("学号", "采分点", "值", "日期"))
    for _ in range(2):
        assert cli(app, "scores", "import", str(path), "--as", "chenjing").exit_code == 0
    rows = live(session, "A06")
    assert sorted((e.occurred_on.day, e.value) for e in rows) == [(17, 80.0), (18, 90.0), (18, 100.0)]


def test_numbers_percent_cells_and_csv_read_as_people_typed_them(app, session, tmp_path):
    path = workbook(tmp_path / "全勤.xlsx", [(2023010101, "全勤率", 0.95), (2023010102.0, "全勤率", 90)])
    wb = openpyxl.load_workbook(path)
    wb["采分"]["C2"].number_format = "0%"  # Excel shows 95%: the cell holds 0.95
    wb.save(path)
    assert cli(app, "scores", "import", str(path), "--as", "T001").exit_code == 0
    assert sorted(e.value for e in live(session, "A03")) == [90.0, 95.0]

    csv_path = tmp_path / "采分.csv"
    csv_path.write_bytes("学号,采分点,值\n2023010103,全勤率,88%\n".encode("gb18030"))
    result = cli(app, "scores", "import", str(csv_path), "--as", "T001")
    assert result.exit_code == 0, result.output
    assert sorted(e.value for e in live(session, "A03")) == [88.0, 90.0, 95.0]


def test_dates_place_entries_in_their_period_with_the_grace_window(app, session, tmp_path, catalogue, today):
    cal = load_calendar(session)
    attendance = catalogue.by_code["A03"]  # 周末
    # Today is Wednesday 19 November: last week ended on Sunday 16, its grace window runs to the 19th.
    assert place_dated(attendance, date(2025, 11, 14), today, cal).period_key == "2025-W46"
    assert place_dated(attendance, date(2025, 11, 18), today, cal).period_key == "2025-W47"
    with pytest.raises(PeriodError, match="import/period_over"):
        place_dated(attendance, date(2025, 11, 5), today, cal)
    with pytest.raises(PeriodError, match="import/future_date"):
        place_dated(attendance, date(2025, 11, 20), today, cal)
    with pytest.raises(PeriodError, match="period_grace_over"):
        place_dated(attendance, date(2025, 11, 14), date(2025, 11, 21), cal)
    # A 学期末 point dated in the semester just ended counts for it, within 14 days of its end.
    credit = catalogue.by_code["A09"]
    assert place_dated(credit, date(2026, 1, 20), date(2026, 2, 10), cal).period_key == "2025-2026-1"
    with pytest.raises(PeriodError, match="period_grace_over"):
        place_dated(credit, date(2026, 1, 20), date(2026, 2, 20), cal)

    path = workbook(tmp_path / "d.xlsx", [
        ("2023010101", "全勤率", 90, "2025-11-14"),
        ("2023010102", "全勤率", 95, "2025-11-05"),
    ], headers=("学号", "采分点", "值", "日期"))
    result = cli(app, "scores", "import", str(path), "--as", "T001")
    assert result.exit_code == 1 and "采分 第3行 日期：2025-11-05所在的周已结束" in result.output


def test_import_as_a_function_raises_with_every_error(session, college, catalogue, today, tmp_path):
    actor = load_actor(session, "wangfang")
    path = workbook(tmp_path / "e.xlsx", [("2023010101", None, "满勤率", 90),
                                          (None, "计算机2301", "全勤率", 90),
                                          ("2023010101", "计算机2301", "全勤率", 90)],
                    headers=("学号", "班级编号", "采分点", "值"))
    with pytest.raises(ScoreImportError) as info:
        import_scores(session, catalogue, path, actor, today)
    assert [render("errors/problem.txt", p=p) for p in info.value.problems] == [
        "采分 第3行 采分点：班级的全勤率由学生的全勤率自动计算，不需要导入",
        "采分 第4行 班级编号：学号和班级编号只填一个：学生采分点填学号，班级采分点填班级编号",
    ]


# ───────────────────────────── export ─────────────────────────────

def record_history(db_url, redis_url):
    """A few weeks of records for 计算机2301 and 软件2301, as people type them."""
    for day, who, text in [
        (date(2025, 11, 5), "wangfang", "全勤率 张三 90 李四 100 王五 80\n学业计划 张三 李四"),
        (date(2025, 11, 5), "chenjing", "作业完成率 张三 80 李四 95"),
        (date(2025, 11, 12), "wangfang", "全勤率 张三 100 李四 95\n课外学习 张三 2"),
        (date(2025, 11, 12), "liuwei", "心理辅导 张三"),
        (date(2025, 11, 18), "wangfang", "全勤率 张三 95 李四 85\n个人发展规划 张三"),
        (date(2025, 11, 18), "chenjing", "作业完成率 张三 90 王五 70"),
        (date(2025, 11, 18), "sunli", "违纪频次 李四\n综合素质测评 张三 88 赵六 76\n职业生涯规划 张三"),
        (date(2025, 11, 18), "heping", "全勤率 赵六 92"),
    ]:
        reply = say(make_service(db_url, day, redis_url), who, text)
        assert "已记录" in reply, reply


def card_rows(ws):
    """Rows of a card sheet by 姓名: {column name: value}."""
    names = [c.value for c in ws[4]]
    groups = [c.value for c in ws[3]]
    header = []
    for i, name in enumerate(names):
        header.append(name if name is not None else groups[i])
    out = {}
    for row in ws.iter_rows(min_row=5, values_only=True):
        if row[0] and row[1] and str(row[0]).isdigit():
            out[row[1] if row[1] not in out else f"{row[1]}#{row[0]}"] = dict(zip(header, row, strict=False))
    return out


def test_exported_class_totals_equal_the_chat_card(app, svc, session, db_url, redis_url, tmp_path):
    record_history(db_url, redis_url)
    out = tmp_path / "cards.xlsx"
    result = cli(app, "export", "cards", "--class", "计算机2301", "--out", str(out))
    assert result.exit_code == 0, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["计算机2301"]
    ws = wb["计算机2301"]
    rows = card_rows(ws)
    assert len(rows) == 5

    chat = say(svc, "zhangsan", "储值卡")
    zhang = rows["张三"]
    assert f"总分 {zhang['总分']:.1f}" in chat
    assert f"小计 {zhang['学业小计']:.1f}" in chat
    assert zhang["全勤率"] == 95.0 and zhang["学业计划"] == "已提交" and zhang["课外学习频次"] == 2

    cal = load_calendar(session)
    students = session.scalars(select(Student).join(SchoolClass).where(SchoolClass.code == "计算机2301")).all()
    for s in students:
        card, _ = student_card(session, svc.catalogue, cal, s.id, svc.today())
        row = next(r for r in rows.values() if r["学号"] == s.student_no)
        assert row["总分"] == card.total and row["增值"] == card.value_added
        assert [row["学业小计"], row["个人小计"], row["职业小计"]] == [d.subtotal for d in card.domains]

    assert "心理辅导频次" not in rows["张三"]  # sensitive: not shown by default, still counted
    assert ws.page_setup.orientation == "landscape"
    assert ws.page_setup.fitToWidth == 1 and ws.page_setup.fitToHeight == 0
    assert ws.sheet_properties.pageSetUpPr.fitToPage
    assert ws.print_title_rows == "$1:$4"
    assert ws.freeze_panes == "C5"
    assert "计算机2301" in ws["A1"].value and "班主任 王芳" in ws["A2"].value

    sensitive = tmp_path / "s.xlsx"
    assert cli(app, "export", "cards", "--class", "计算机2301", "--out", str(sensitive),
               "--with-sensitive").exit_code == 0
    full = card_rows(openpyxl.load_workbook(sensitive)["计算机2301"])
    assert full["张三"]["心理辅导频次"] == 1 and full["张三"]["总分"] == zhang["总分"]


def test_department_export_has_a_sheet_per_class(app, session, db_url, redis_url, tmp_path):
    record_history(db_url, redis_url)
    out = tmp_path / "dept.xlsx"
    result = cli(app, "export", "cards", "--department", "信息工程系", "--out", str(out))
    assert result.exit_code == 0, result.output
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["计算机2301", "软件2301"]
    assert card_rows(wb["软件2301"])["赵六"]["综合素质测评"] == 76
    assert cli(app, "export", "cards", "--department", "没有", "--out", str(out)).exit_code == 1
    assert cli(app, "export", "cards", "--class", "没有", "--out", str(out)).exit_code == 1
    assert cli(app, "export", "cards", "--out", str(out)).exit_code == 2


def test_the_analysis_report_summarises_the_class(app, svc, session, db_url, redis_url, tmp_path):
    record_history(db_url, redis_url)
    out = tmp_path / "report.xlsx"
    assert cli(app, "export", "report", "--class", "计算机2301", "--out", str(out)).exit_code == 0
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == ["分析报告", "储值卡"]
    cells = {}
    for row in wb["分析报告"].iter_rows(values_only=True):
        if row[0]:
            cells.setdefault(row[0], row[1:])  # the first table naming a row wins (总分 is in two)
    assert cells["学生人数"][0] == 5 and cells["班主任"][0] == "王芳"
    assert "一、各发展领域平均分" in cells and "二、总分分布" in cells and "五、缺失记录最多的采分点" in cells
    rows = card_rows(wb["储值卡"])
    totals = [r["总分"] for r in rows.values() if r["总分"] is not None]
    assert cells["总分"][0] == round(sum(totals) / len(totals), 1)
    lowest = min(rows.values(), key=lambda r: (r["总分"] if r["总分"] is not None else 999))
    assert lowest["学号"] in cells  # listed among the students with the lowest totals
    assert "全勤率" in cells  # 刘洋 ×2 have no 全勤率 last week: among the most missing points


def test_bulk_cards_equal_student_card_also_in_the_first_week_of_a_term(session, college, catalogue, db_url,
                                                                         redis_url):
    record_history(db_url, redis_url)
    say(make_service(db_url, date(2026, 1, 20), redis_url), "wangfang", "学期学分绩 张三 80")
    cal = load_calendar(session)
    ids = list(session.scalars(select(Student.id)))
    for day in (date(2025, 11, 19), date(2025, 11, 12), date(2026, 2, 4), date(2026, 1, 31)):
        bulk = student_cards(session, catalogue, cal, ids, day)
        for i in ids:
            card, _ = student_card(session, catalogue, cal, i, day)
            assert (bulk[i].total, bulk[i].value_added, bulk[i].previous_subtotals) == \
                (card.total, card.value_added, card.previous_subtotals), (day, i)


# ───────────────────────────── 导出 <班级> ─────────────────────────────

def link_of(reply: str) -> str:
    [url] = [w for w in reply.split() if "/export/" in w]
    return url


def ask(app, svc, userid, text):
    with app.app_context():
        return say(svc, userid, text)


def test_export_link_downloads_the_class_workbook(app, svc, session, db_url, redis_url):
    record_history(db_url, redis_url)
    reply = ask(app, svc, "wangfang", "导出 计算机2301")
    url = link_of(reply)
    assert url.startswith("http://localhost:8000/export/") and "24 小时" in reply

    response = app.test_client().get(url.removeprefix("http://localhost:8000"))
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment") and "filename*=UTF-8''" in disposition
    assert "no-store" in response.headers["Cache-Control"]
    wb = openpyxl.load_workbook(io.BytesIO(response.data))
    rows = card_rows(wb["储值卡"])
    assert f"总分 {rows['张三']['总分']:.1f}" in say(svc, "zhangsan", "储值卡")
    assert rows["张三"]["心理辅导频次"] == 1  # the class's 班主任 sees sensitive points


def test_who_may_export_which_class(app, svc):
    assert "/export/" in ask(app, svc, "wujun", "导出 软件2301")  # 系部主任, own department
    assert "不在你负责的范围" in ask(app, svc, "wujun", "导出 会计2301")
    assert "/export/" in ask(app, svc, "zhengyuan", "导出 会计2301")  # 院领导: every class
    assert "不在你负责的范围" in ask(app, svc, "wangfang", "导出 软件2301")
    assert "不能使用“导出”" in ask(app, svc, "chenjing", "导出 计算机2301")
    assert "仅限教职工" in ask(app, svc, "zhangsan", "导出 计算机2301")
    assert "找不到班级" in ask(app, svc, "wangfang", "导出 没有这个班")
    assert "用法" in ask(app, svc, "wangfang", "导出")


def test_leaders_workbook_leaves_out_sensitive_points(app, svc, db_url, redis_url):
    record_history(db_url, redis_url)
    path = link_of(ask(app, svc, "zhengyuan", "导出 计算机2301")).removeprefix("http://localhost:8000")
    rows = card_rows(openpyxl.load_workbook(io.BytesIO(app.test_client().get(path).data))["储值卡"])
    assert "心理辅导频次" not in rows["张三"] and rows["张三"]["总分"] is not None


def test_tampered_expired_and_revoked_links(app, svc, session):
    url = link_of(ask(app, svc, "wangfang", "导出 计算机2301")).removeprefix("http://localhost:8000")
    client = app.test_client()
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    response = client.get(tampered)
    assert response.status_code == 403 and "链接无效" in response.get_data(as_text=True)
    assert client.get("/export/not-a-token").status_code == 403

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 24 * 3600 - 60  # EXPORT_LINK_HOURS: 24 by default

    klass = session.scalar(select(SchoolClass).where(SchoolClass.code == "计算机2301"))
    old = URLSafeTimedSerializer("test", salt=SALT, signer=PastSigner).dumps({"class": klass.id, "by": "wangfang"})
    response = client.get(f"/export/{old}")
    assert response.status_code == 410 and "已过期" in response.get_data(as_text=True)
    other_key = URLSafeTimedSerializer("other", salt=SALT).dumps({"class": klass.id, "by": "wangfang"})
    assert client.get(f"/export/{other_key}").status_code == 403

    # A 班主任 who no longer heads the class cannot use a link made before.
    klass.head_teacher_id = None
    session.commit()
    response = client.get(url)
    assert response.status_code == 403 and "已不能导出" in response.get_data(as_text=True)


def test_link_lifetime_is_configurable():
    assert link_max_age(load_settings(environ={"SECRET_KEY": "t"})) == 24 * 3600  # the default
    assert load_settings(environ={"SECRET_KEY": "t", "EXPORT_LINK_HOURS": "48"}).export_link_hours == 48
    with pytest.raises(ValueError, match="EXPORT_LINK_HOURS"):
        load_settings(environ={"SECRET_KEY": "t", "EXPORT_LINK_HOURS": "0"})
