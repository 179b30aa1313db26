"""Hostile input at volume: generated chat through the encrypted WeCom callback of a live server.

Every message is a valid WeCom envelope around a hostile text (tests/fakes/hostile.py), so every
one must be answered 200 with a reply that decrypts, within WeChat's 5 s, never with the
error apology, and must write exactly what its reply says it recorded, or nothing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import date

from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy import func, select

from models.catalogue import Catalogue
from models.schema import PlanTask, ProcessedMessage, ScoreEntry, Staff
from tests.edges.test_wecom import AGENT_ID, CORP_ID, WeComSender, new_msg_id, serve  # noqa: F401
from tests.fakes.hostile import Vocabulary, chat

EXAMPLES = 1400  # about 1,100 distinct messages (hypothesis repeats some): `make test` sends at least 1,000
WECHAT_TIMEOUT_S = 5.0
ERROR_APOLOGY = "处理这条消息时出错了"
# Every role, students and a stranger; those who record most (班主任, 任课教师, 学工办) most often.
SENDERS = (
    "wangfang", "wangfang", "wangfang", "chenjing", "chenjing", "sunli", "sunli", "liuwei", "zhoujie", "zhaoqiang",
    "wujun", "zhengyuan", "admin", "heping", "zhangsan", "lisi", "zhaoliu", "stranger01",
)
RECORDED = re.compile(r"已记录 (\d+) 条")
UNDONE = re.compile(r"已撤销 (\d+) 条")


def _cdata(value: str) -> str:
    """A CDATA section as WeCom writes one: a `]]>` in the text splits it in two."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_xml(sender: str, content: str, msg_id: str) -> str:
    return (f"<xml><ToUserName>{_cdata(CORP_ID)}</ToUserName><FromUserName>{_cdata(sender)}</FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{_cdata(content)}</Content><MsgId>{msg_id}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>")


@dataclass
class Tally:
    """What the fuzz saw: answers, slowest answer, recordings by message."""

    messages: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    slowest: float = 0.0
    recorded: dict[str, int] = field(default_factory=dict)  # MsgId → entries its reply says were recorded
    undone: int = 0


def _counts(session) -> tuple[int, int, int]:
    """(score entries, live score entries, processed messages), read afresh."""
    session.rollback()
    row = session.execute(select(
        select(func.count()).select_from(ScoreEntry).scalar_subquery(),
        select(func.count()).select_from(ScoreEntry).where(ScoreEntry.revoked_at.is_(None)).scalar_subquery(),
        select(func.count()).select_from(ProcessedMessage).scalar_subquery(),
    )).one()
    return row[0], row[1], row[2]


def send_and_check(wecom: WeComSender, session, tally: Tally, sender: str, content: str) -> str:
    """Post one message as WeCom would; check the answer and what it wrote; return the reply."""
    before = _counts(session)
    msg_id = new_msg_id()
    params, body = wecom.envelope(wecom.encrypt(text_xml(sender, content, msg_id)))
    started = time.monotonic()
    resp = wecom.post_raw(params, body)
    elapsed = time.monotonic() - started
    shown = f"{sender}: {content[:300]!r}"
    assert resp.status_code == 200, (shown, resp.status_code, resp.text[:200])
    reply = wecom.reply_text(resp)
    assert reply, shown
    assert ERROR_APOLOGY not in reply, (shown, reply[:300])
    assert elapsed < WECHAT_TIMEOUT_S, (shown, elapsed)
    tally.messages += 1
    tally.slowest = max(tally.slowest, elapsed)

    after = _counts(session)
    recorded = RECORDED.search(reply)
    undone = UNDONE.search(reply)
    entries = int(recorded.group(1)) if recorded else 0
    revoked = int(undone.group(1)) if undone else 0
    # No partial write: the rows that changed are exactly those the reply tells of.
    assert after[0] - before[0] == entries, (shown, reply[:300])
    assert after[1] - before[1] == entries - revoked, (shown, reply[:300])
    assert after[2] - before[2] == 1, shown  # handled once, its reply kept for WeChat's retries
    if entries:
        tally.recorded[msg_id] = entries
    tally.undone += revoked
    return reply


def _seed_tasks(session) -> None:
    """Two plan tasks, so that 进度 #N, 完成 #N and 任务 #N sometimes find one."""
    staff = {s.wecom_userid: s for s in session.scalars(select(Staff))}
    for code in ("1.1", "1.2"):
        session.add(PlanTask(code=code, title=f"任务{code}", level="系部", owner_id=staff["wangfang"].id,
                             supervisor_id=staff["wujun"].id, due=date(2025, 12, 31), cycle=2025))
    session.commit()


def _check_the_keys(session, tally: Tally) -> None:
    """The unique keys hold, and every entry belongs to a message whose reply announced it."""
    session.rollback()
    assert session.scalar(select(func.count()).select_from(ProcessedMessage)) == tally.messages
    assert session.scalar(select(func.count(func.distinct(ProcessedMessage.msg_key)))) == tally.messages
    by_message = dict(session.execute(
        select(ScoreEntry.source_msg, func.count()).group_by(ScoreEntry.source_msg)).all())
    assert by_message == tally.recorded
    revoked = session.scalar(select(func.count()).select_from(ScoreEntry).where(ScoreEntry.revoked_at.is_not(None)))
    assert revoked == tally.undone


def test_hostile_chat_through_the_encrypted_callback(serve, college, session, catalogue: Catalogue):  # noqa: F811
    """Over 1,000 distinct generated messages from 14 senders (every role, students, a stranger): 0 × 5xx, 0 × 4xx,
    0 × the error apology, each answered within 5 s, no partial write, the unique keys hold."""
    _seed_tasks(session)
    wecom = serve()
    vocab = Vocabulary.load(session, catalogue)
    tally = Tally()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(chat(vocab, SENDERS))
    def fuzz(message: tuple[str, str]) -> None:
        if message not in tally.seen:  # a repeat would only say again what its first sending said
            send_and_check(wecom, session, tally, *message)
            tally.seen.add(message)

    fuzz()
    _check_the_keys(session, tally)
    print(f"\nfuzz: {tally.messages} messages, slowest answer {tally.slowest * 1000:.0f} ms, "
          f"{len(tally.recorded)} recordings ({sum(tally.recorded.values())} entries), {tally.undone} undone")
    assert tally.messages >= 1000


# ── the bugs the fuzz found, pinned ──────────────────────────────────────────

NUMBER_CASES = [
    ("wangfang", "撤销 #" + "9" * 50, "不是有效的编号"),
    ("wangfang", "撤销 #2147483648", "不是有效的编号"),
    ("wangfang", "撤销 #𐩀", "撤销的写法"),  # str.isdigit() says yes, int() says no
    ("wangfang", "处理 #" + "9" * 50 + " 已约谈", "不是有效的编号"),
    ("wangfang", "误报 #99999999999 记错了", "不是有效的编号"),
    ("wangfang", "预警 #" + "9" * 30, "不是有效的编号"),
    ("wangfang", "预警 #𐩀", "提出预警请写"),
    ("wangfang", "任务 #" + "9" * 30, "不是有效的编号"),
    ("wangfang", "进度 #" + "9" * 30 + " 50", "不是有效的编号"),
    ("wangfang", "完成 ＃" + "９" * 30, "不是有效的编号"),
    ("wangfang", "达成度 #99999999999 50", "不是有效的编号"),
    ("wangfang", "课外学习 张三 " + "9" * 400, "太大，不是有效的数值"),
    ("wangfang", "全勤率 张三 1" + "0" * 400 + "%", "太大，不是有效的数值"),
    ("wangfang", "全勤率 张三 1e309", "不是数值"),
    ("wangfang", "全勤率 张三 NaN", "不是数值"),
    ("wangfang", "全勤率 张三 inf", "不是数值"),
]


def test_numbers_no_column_holds_get_a_bad_input_reply(serve, college, session):  # noqa: F811
    """The numbers the fuzz found reaching the database (or int()) answered with what is wrong."""
    wecom = serve()
    for sender, content, expected in NUMBER_CASES:
        reply = send_and_check(wecom, session, Tally(), sender, content)  # 200, no apology, nothing written
        assert expected in reply, (content[:40], reply)
