"""Logs without personal data (PRODUCT.md §6): a whole scripted session of the demo college, as
processes — `demo`, the console chat as 王芳 and then as 张三 (recordings, cards, 撤销, errors, a
warning flag, an export link), jobs and a delivery to WeCom with a refused call, and the same
messages over the encrypted WeCom callback of gunicorn (access log on) — and then every log they
wrote is searched for every name on the roster, every text sent and the export link's token.

Logs are stderr and gunicorn's log; a command's own output (the console's replies on stdout, a
flush that prints what it would send) is what the user asked to see, not a log."""

from __future__ import annotations

import re
import sys
from urllib.parse import urlparse

import requests
from sqlalchemy import text

from bot.cli.db import upgrade_database
from tests.edges.test_wecom import SAMPLE, WeComSender, text_xml
from tests.fakes.fake_wecom import FakeWeCom
from tests.fakes.processes import free_port
from tests.outside.conftest import ProcessEnv, bot, bot_env, ok, web_process

WECOM_CALLBACK = dict(WECOM_CORP_ID=SAMPLE["corp_id"], WECOM_TOKEN=SAMPLE["token"], WECOM_AES_KEY=SAMPLE["aes_key"],
                      WECOM_AGENT_ID="1000002", WECOM_SECRET="secret", WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/")
LINK = re.compile(r"https?://\S+/export/(\S+)")


def roster(db) -> tuple[list[str], list[str], list[str]]:  # noqa: ANN001
    """Every student's and staff member's name, and the students' WeCom accounts."""
    with db.connect() as conn:
        students = [r[0] for r in conn.execute(text("SELECT name FROM student"))]
        staff = [r[0] for r in conn.execute(text("SELECT name FROM staff"))]
        accounts = [r[0] for r in conn.execute(text("SELECT wecom_userid FROM student WHERE wecom_userid IS NOT NULL"))]
        class_names = [r[0] for r in conn.execute(text(
            "SELECT s.name FROM student s JOIN school_class c ON c.id = s.class_id WHERE c.code = '计算机2301' "
            "ORDER BY s.student_no"))]
    return students + staff, accounts, class_names


def script(names: list[str]) -> tuple[list[str], list[str]]:
    """What 王芳 (班主任 of 计算机2301) and then 张三 send: recordings, cards, undo, mistakes, a flag."""
    a, b, c = [n for n in names if n not in ("张三", "刘洋")][:3]
    teacher = [
        f"全勤率 张三 95 {a} 90",
        f"违纪 {b}",
        f"作业 {c} 88\n准时率 {a} 97",
        "储值卡 张三",
        "班级卡 计算机2301",
        "撤销",
        f"全勤率 {a} 九十",
        "全勤率 查无此人 95",
        "全勤率 刘洋 88",
        "撤销 #" + "9" * 50,
        f"预警 {b} 心理 最近情绪低落需要关注",
        "导出 计算机2301",
    ]
    student = ["储值卡", f"储值卡 {a}", "退订周报", "订阅周报", "全勤率 张三 100"]
    return teacher, student


def test_a_demo_session_leaves_no_name_and_no_text_in_the_logs(fresh_db, db, tmp_path):
    upgrade_database(fresh_db)
    env = bot_env(fresh_db)
    logs: list[str] = []

    def run(*args: str, stdin: str | None = None, extra: ProcessEnv | None = None) -> str:
        done = bot(extra or env, *args, stdin=stdin)
        logs.append(done.stderr)
        return ok(done)

    run("demo", "--today", "2025-11-19")
    names, accounts, class_names = roster(db)
    teacher, student = script(class_names)

    chat = run("chat", "--as", "wangfang",
               stdin="".join(m.replace("\n", "\\\n") + "\n" for m in teacher) + "/as zhangsan\n"
               + "".join(m + "\n" for m in student))
    assert "已记录" in chat and "找不到学生" in chat and LINK.search(chat), chat  # the replies are on stdout
    assert "message channel=console" in logs[-1], logs[-1]  # and the log lines on stderr

    for job, now in (("risk_scan", "2025-11-20T06:40"), ("student_weekly_card", "2025-11-24T08:10"),
                     ("weekly_digest", "2025-11-24T08:00"), ("warning_escalation", "2025-11-28T09:25")):
        assert f"{job}: ok" in run("jobs", "run", job, "--now", now)
    with FakeWeCom() as fake:
        fake.fail_next(1, errcode=45009, path="message/send")  # one refused call: the error path logs too
        fake.fail_next(1, errcode=60020, path="message/send")
        wecom = dict(WECOM_CORP_ID=fake.corp_id, WECOM_SECRET=fake.secret, WECOM_AGENT_ID=str(fake.agent_id),
                     WECOM_API_BASE=fake.base_url, WECOM_TOKEN=SAMPLE["token"], WECOM_AES_KEY=SAMPLE["aes_key"])
        run("outbox", "flush", extra=ProcessEnv(env, **wecom))
        assert fake.sent_messages(), "the weekly cards went out"
    run("outbox", "failed")

    # The same conversation over the encrypted callback of gunicorn, its access log on.
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--access-logfile", "-", "bot:create_app()"]
    tokens = []
    with web_process(argv, bot_env(fresh_db, APP_ENV="production", **WECOM_CALLBACK), port,
                     tmp_path / "gunicorn.log") as server:
        sender = WeComSender(server.base, SAMPLE["token"], SAMPLE["aes_key"], SAMPLE["corp_id"])
        replies = [sender.reply_text(sender.post(text_xml("wangfang", m))) for m in teacher]
        replies += [sender.reply_text(sender.post(text_xml("zhangsan", m))) for m in student]
        assert any("已记录" in r for r in replies), replies
        found = [LINK.search(r) for r in replies if LINK.search(r)]
        assert found, replies
        for match in found:
            tokens.append(match.group(1))
            path = urlparse(match.group(0)).path
            assert requests.get(server.base + path, timeout=30).status_code == 200  # the workbook
        assert requests.get(server.base + "/healthz?t=" + tokens[0], timeout=10).status_code == 200
        # gunicorn.conf.py's own metrics directory: every message counted once, whichever worker took it.
        scraped = requests.get(server.base + "/metrics", timeout=10).text
        assert sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                   if line.startswith('czk_messages_total{channel="wecom"')) == len(replies), scraped
        served = server.output()
    logs.append(served)
    assert "message channel=wecom" in served and "/export/[redacted]" in served, served  # the logs are there

    everything = "\n".join(logs)
    sent = [m for m in teacher + student if " " in m]  # a bare command name (储值卡) is logged as the command
    private = [*names, *sent, *(part for m in sent for part in m.split("\n")), *tokens, "最近情绪低落需要关注"]
    leaks = {p for p in private if p in everything}
    leaks |= {a for a in accounts if re.search(rf"\b{re.escape(a)}\b", everything)}
    assert not leaks, (sorted(leaks)[:20], [line for line in everything.splitlines()
                                            if any(leak in line for leak in leaks)][:20])

    with db.connect() as conn:
        results = [r[0] or "" for r in conn.execute(text("SELECT result FROM job_run"))]
    assert len(results) >= 4
    assert not [r for r in results if any(n in r for n in names)], results
