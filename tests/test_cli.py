"""The command line as a user runs it: migrations, the console channel from stdin."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from bot.cli import upgrade_database
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
