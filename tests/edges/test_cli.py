"""The command line as a user runs it: migrations, the console channel from stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from bot.cli.db import upgrade_database
from core.config import ROOT
from models.db import Base


def run_bot(args, db_url, stdin=None):
    env = dict(os.environ, DATABASE_URL=db_url, SECRET_KEY="test")
    env.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "bot", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_migrations_create_exactly_the_models_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url)
    upgrade_database(url)  # a second upgrade is a no-op
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert "score_entry" in inspect(engine).get_table_names()


def test_console_chat_is_scriptable_from_stdin(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert run_bot(["db", "upgrade"], url).returncode == 0
    loaded = run_bot(["demo"], url)
    assert loaded.returncode == 0, loaded.stderr
    script = "全勤率 张三 95 李四 90\n/as zhangsan\n储值卡\n/as wangfang\n撤销\n"
    chat = run_bot(["chat", "--as", "wangfang"], url, stdin=script)
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    assert "已记录 2 条" in out
    assert "张三（" in out and "储值卡 ·" in out and "全勤率 95%" in out
    assert "已撤销 2 条" in out
    again = run_bot(["demo"], url)
    assert again.returncode == 1 and "已有" in again.stderr
    skipped = run_bot(["demo", "--skip-if-loaded"], url)
    assert skipped.returncode == 0


def test_unknown_console_user_is_told_how_to_bind(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    run_bot(["db", "upgrade"], url)
    chat = run_bot(["chat", "--as", "nobody"], url, stdin="储值卡\n")
    assert chat.returncode == 0 and "绑定" in chat.stdout


def test_a_command_before_db_upgrade_says_what_to_do(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (["jobs", "list"], ["chat", "--as", "wangfang"]):
        done = run_bot(args, url, stdin="储值卡\n")
        assert done.returncode == 2, done.stderr
        assert "python -m bot db upgrade" in done.stderr and "Traceback" not in done.stderr


def test_every_command_group_of_the_contract_is_registered(tmp_path):
    """bot/cli/ holds one module per command group (PRODUCT.md §5); each registers itself."""
    from bot import create_app

    app = create_app({"database_url": f"sqlite:///{tmp_path / 'g.db'}", "secret_key": "test"})
    groups = {name: set(getattr(cmd, "commands", {})) for name, cmd in app.cli.commands.items()}
    assert groups == {
        "db": {"upgrade"}, "roster": {"import", "template"}, "tasks": {"import"}, "scores": {"import"},
        "export": {"cards", "report"}, "demo": set(), "chat": set(), "serve": set(), "scheduler": set(),
        "jobs": {"list", "run"}, "outbox": {"flush", "failed", "retry"}, "binding": {"codes"}, "menu": {"sync"},
    }


def test_the_console_at_a_terminal_greets_and_switches_identity():
    """At a terminal the console greets, prompts, and answers its own /as commands (templates/cli/)."""
    import io
    import logging
    from types import SimpleNamespace

    from bot.channels.console import run_console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = io.StringIO()
    service = SimpleNamespace(evaluator=SimpleNamespace(background=True))
    pipeline_log = logging.getLogger("bot.pipeline")
    level = pipeline_log.level
    try:  # at a terminal the console quiets the per-message log lines; not for the tests that follow
        assert run_console(service, "wangfang", Terminal("/as\n/as zhangsan\n\n/quit\n"), out) == 0
    finally:
        pipeline_log.setLevel(level)
    assert out.getvalue() == (
        "储值卡助手 · 控制台（当前身份：wangfang）。/as 账号 切换身份，/who 查看演示人员，/quit 退出。\n"
        "> 用法：/as 账号\n> 已切换为 zhangsan\n> > ")


def test_binding_codes_writes_a_printable_sheet_of_working_codes(tmp_path):
    """`binding codes --class CODE [--parents] --out FILE.xlsx`: a row per student (学号, 姓名, 验证码,
    有效期至), codes stored only as hashes, each binding its student once; an unknown class issues nothing."""
    from openpyxl import load_workbook
    from sqlalchemy import func, select

    from handlers.binding import replaced_notice
    from models.binding import bind
    from models.db import make_sessionmaker
    from models.schema import BindCode, SchoolClass, Student

    url = f"sqlite:///{tmp_path / 'b.db'}"
    assert run_bot(["db", "upgrade"], url).returncode == 0
    assert run_bot(["demo"], url).returncode == 0
    out = tmp_path / "codes.xlsx"
    done = run_bot(["binding", "codes", "--class", "计算机2301", "--out", str(out)], url)
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    with make_sessionmaker(engine)() as session:
        klass = session.scalar(select(SchoolClass).where(SchoolClass.code == "计算机2301"))
        students = {s.student_no: s.name for s in session.scalars(select(Student).where(Student.class_id == klass.id))}
        assert f"{len(students)} 名学生" in done.stdout and str(out) in done.stdout

        ws = load_workbook(out).active
        rows = list(ws.iter_rows(values_only=True))
        assert "计算机2301" in rows[0][0] and "绑定 学号 验证码" in rows[1][0]
        assert rows[2] == ("学号", "姓名", "验证码", "有效期至")
        sheet = {r[0]: r for r in rows[3:]}
        assert {no: r[1] for no, r in sheet.items()} == students
        assert all(isinstance(r[2], str) and len(r[2]) == 8 and r[2].isdigit() for r in sheet.values())
        assert all(len(r[3]) == len("2025-11-26 12:00") for r in sheet.values())
        hashes = " ".join(session.scalars(select(BindCode.code_hash)))
        assert not [r[2] for r in sheet.values() if r[2] in hashes]

        no, row = sorted(sheet.items())[0]
        result = bind(session, "oCli", no, row[2], secret_key="test", now=datetime.now(UTC),
                      tell_replaced=replaced_notice)
        assert result.bound and result.kind == "student" and result.student_name == row[1]
        session.commit()

        parents = run_bot(["binding", "codes", "--class", "计算机2301", "--parents", "--out", str(out)], url)
        assert parents.returncode == 0, parents.stderr
        assert "家长" in parents.stdout and "家长" in load_workbook(out).active["A1"].value
        before = session.scalar(select(func.count()).select_from(BindCode))
        missing = run_bot(["binding", "codes", "--class", "没有这个班", "--out", str(tmp_path / "x.xlsx")], url)
        assert missing.returncode == 1 and "找不到班级“没有这个班”" in missing.stderr
        assert "Traceback" not in missing.stderr and not (tmp_path / "x.xlsx").exists()
        session.expire_all()
        assert session.scalar(select(func.count()).select_from(BindCode)) == before
    engine.dispose()
