"""A college set up from nothing with the commands, as a 管理员 types them: `db upgrade`, `roster
template` / `roster import`, `tasks import`, `scores import --as`, a teacher's `chat --as`, and the
`export cards` / `export report` workbooks, each a process on this module's fresh database.
The tests run in order, as the steps of one set-up: the second works on the roster the first imported."""

from __future__ import annotations

import getpass
from datetime import date, timedelta
from pathlib import Path

import openpyxl
import pytest

from tests.domain.test_excel import card_rows
from tests.domain.test_roster import HEADERS  # PRODUCT.md §5: the roster workbook's sheets and headers
from tests.outside.conftest import ProcessEnv, bot, bot_env, ok, scalar

ROSTER = {
    "系部": [["网络工程系", "T010"]],
    "教职工": [["T010", "李主任", "lizhuren", "系部主任", "网络工程系"],
              ["T011", "周敏", "zhoumin", "班主任", "网络工程系"],
              ["T012", "吴刚", "wugang", "任课教师", "网络工程系"],
              ["T013", "郑洁", "zhengjie", "辅导员", "网络工程系"]],
    "班级": [["NET2501", "网络2501", "网络工程系", 2025, "T011", "T013"]],
    "学生": [[2025010101, "陈一", "NET2501", "chenyi"],
            [2025010102, "林二", "NET2501", None],
            [2025010103, "黄三", "NET2501", "huangsan"]],
    "任课": [["T012", "NET2501", "网络基础"]],
}


def workbook(path: Path, sheets: dict[str, tuple[list, list[list]]]) -> Path:
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for name, (headers, rows) in sheets.items():
        ws = wb.create_sheet(name)
        ws.append(headers)
        for row in rows:
            ws.append(row)
    wb.save(path)
    return path


def reply_starting(out: str, head: str) -> str:
    """The console reply that starts with `head` (replies are separated by a blank line)."""
    start = out.index(head)
    return out[start:out.find("\n\n", start)]


def roster_workbook(path: Path, rows: dict[str, list[list]]) -> Path:
    return workbook(path, {name: (HEADERS[name], data) for name, data in rows.items()})


@pytest.fixture(scope="module")
def env(fresh_db: str) -> ProcessEnv:
    return bot_env(fresh_db)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files")


def test_db_upgrade_then_roster_template_then_import_all_or_nothing(env, db, files):
    assert "数据库已是最新结构" in ok(bot(env, "db", "upgrade"))
    assert scalar(db, "SELECT count(*) FROM student") == 0

    template = files / "名册模板.xlsx"
    assert str(template) in ok(bot(env, "roster", "template", str(template)))
    wb = openpyxl.load_workbook(template)
    assert wb.sheetnames == list(HEADERS)
    assert {name: [c.value for c in wb[name][1]] for name in wb.sheetnames} == HEADERS
    assert all(wb[name].max_row == 1 for name in wb.sheetnames)  # headers only

    bad_rows = {**ROSTER, "学生": [*ROSTER["学生"], [2025010104, "何四", "NET9999", None]]}
    bad = bot(env, "roster", "import", str(roster_workbook(files / "名册-有错.xlsx", bad_rows)))
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert "未导入任何内容" in bad.stderr and "学生 第5行 班级编号" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert [scalar(db, f"SELECT count(*) FROM {t}") for t in ("department", "staff", "student")] == [0, 0, 0]

    good = ok(bot(env, "roster", "import", str(roster_workbook(files / "名册.xlsx", ROSTER))))
    assert "学生：新增 3，更新 0，未变 0" in good and "教职工：新增 4" in good, good
    assert scalar(db, "SELECT count(*) FROM student") == 3


def test_tasks_scores_chat_and_exports_on_the_imported_roster(env, db, files):
    due = date.today() + timedelta(days=40)
    tasks = workbook(files / "任务分解表.xlsx", {"任务": (
        ["编号", "任务", "层面", "负责人工号", "督办人工号", "开始日期", "截止日期"],
        [["3.1", "建设网络实训室", "专业", "T011", "T010", None, due.isoformat()],
         ["3.2", "修订网络基础课程标准", "课程", "T012", "T011", None, due.isoformat()]])})
    assert "任务：新增 2，更新 0，未变 0" in ok(bot(env, "tasks", "import", str(tasks)))

    scores = workbook(files / "学分绩.xlsx", {"采分": (
        ["学号", "采分点", "值"], [["2025010101", "学期学分绩", 88], ["2025010102", "学期学分绩", 75]])})
    refused = bot(env, "scores", "import", str(scores), "--as", "T012")  # a 任课教师 does not record 学分绩
    assert refused.returncode == 1 and "未导入任何内容" in refused.stderr, (refused.stdout, refused.stderr)
    assert scalar(db, "SELECT count(*) FROM score_entry") == 0
    assert "导入 2 条" in ok(bot(env, "scores", "import", str(scores), "--as", "T011"))
    importer = scalar(db, "SELECT min(actor) FROM audit_log WHERE action = 'record'")
    assert f"控制台：{getpass.getuser()}" in importer, importer  # who ran the import, not only whose 工号

    script = "全勤率 陈一 95\n撤销\n全勤率 陈一 92 林二 88\n任务\n储值卡 林二\n储值卡 陈一\n"
    out = ok(bot(env, "chat", "--as", "zhoumin", stdin=script))  # 周敏 exists only through the roster
    assert "已记录 1 条" in out and "已撤销 1 条" in out and "已记录 2 条" in out, out
    card = reply_starting(out, "陈一（")
    assert "全勤率 92%" in card and "学期学分绩 88" in card, card
    assert "〔3.1〕建设网络实训室" in out and "〔3.2〕修订网络基础课程标准" in out, out  # own and supervised
    assert scalar(db, "SELECT count(*) FROM score_entry WHERE revoked_at IS NULL") == 4
    assert scalar(db, "SELECT count(*) FROM score_entry WHERE revoked_at IS NOT NULL") == 1

    cards = files / "储值卡.xlsx"
    assert str(cards) in ok(bot(env, "export", "cards", "--class", "NET2501", "--out", str(cards)))
    wb = openpyxl.load_workbook(cards)
    assert wb.sheetnames == ["NET2501"]
    rows = card_rows(wb["NET2501"])
    assert set(rows) == {"陈一", "林二", "黄三"}
    for name in ("陈一", "林二"):
        assert rows[name]["总分"] is not None
        shown = reply_starting(out, f"{name}（")
        assert f"总分 {rows[name]['总分']:.1f}" in shown, (name, rows[name], shown)
    assert rows["陈一"]["全勤率"] == 92 and rows["陈一"]["学期学分绩"] == 88

    report = files / "分析报告.xlsx"
    assert str(report) in ok(bot(env, "export", "report", "--class", "NET2501", "--out", str(report)))
    wb = openpyxl.load_workbook(report)
    assert wb.sheetnames == ["分析报告", "储值卡"]
    assert card_rows(wb["储值卡"])["陈一"]["总分"] == rows["陈一"]["总分"]
    summary = {row[0]: row[1:] for row in wb["分析报告"].iter_rows(values_only=True) if row[0]}
    assert summary["学生人数"][0] == 3 and summary["班主任"][0] == "周敏"
