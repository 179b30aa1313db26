"""Hostile chat, generated: hypothesis strategies for the fuzz test (tests/edges/test_fuzz.py) and the
fuzz benchmark (bench/fuzz.py).

A message is built from the real grammar (command words, point names and aliases, student
names and 学号, class codes, #N references, values) and then mutated with what a chat window,
a paste or an attacker may put in it: emoji, zero-width and control characters, XML's own
`]]>`, `&` and `<!DOCTYPE`, full-width digits, numbers no column holds (1e309, NaN, fifty
digits), 2,000-character lines and 200-line messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.registry import registry
from models.catalogue import Catalogue
from models.schema import SchoolClass, Staff, Student

HOSTILE = (
    "😀", "👨‍👩‍👧‍👦", "🇨🇳", "\U0001f9d1\u200d\U0001f393",            # emoji, joined sequences, flags
    "\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad", "\u202e",  # zero-width, bidi override
    "\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85",  # control characters
    "\r", "\r\n", "\t", "\u3000", "\u2028", "\u2029",
    "]]>", "]]]]>", "<![CDATA[", "&", "&amp;", "&lt;", "&#0;", "&lol9;", "<", ">", "</Content>",
    "<!DOCTYPE xml>", '<!ENTITY a "]]>">', "<!--", "-->", "<xml>",
    "#", "＃", "%", "％", "，", "、", "：", "；", "\\", "'", '"', "{{ x }}", "{% raw %}", "%s",
    "'; DROP TABLE score_entry;--",
)
NUMBERS = (
    "0", "1", "3", "60", "95", "100", "101", "-1", "+5", "95.5", "95%", "９５", "１００％", "95 %",
    "1e309", "-1e309", "1e3", "NaN", "nan", "inf", "-inf", "Infinity", "9" * 50, "1" + "0" * 400,
    "0.000000001", "2147483647", "2147483648", "9223372036854775808", "١٢", "²", "𐩀", "Ⅻ", "一百",
    "0x10", "1_000", "3.", ".5", "00000000000000000001",
)
NOTES = ("已约谈", "已联系家长，本周补交", "记错了人", "", "好", "已提交验收材料")
CATEGORIES = ("学业", "违纪", "心理", "心理健康", "理财", "就业困难", "其他")
LEVELS = ("关注", "预警", "严重", "")
PERIOD_WORDS = ("上周", "上月", "上学期", "")
DOCUMENT_WORDS = ("已提交", "未提交", "是", "否")
MAX_BYTES = 30_000  # the content's UTF-8 size, so the encrypted callback stays under the 64 KB body limit


@dataclass(frozen=True)
class Vocabulary:
    """The words of the chat grammar, as a college's roster and catalogue spell them."""

    commands: tuple[str, ...]
    points: tuple[str, ...]
    levels: tuple[str, ...]
    students: tuple[str, ...]
    classes: tuple[str, ...]
    recordable: dict[str, tuple[str, ...]]  # a staff userid → the point words their roles record

    def points_of(self, userid: str) -> tuple[str, ...]:
        """The point words `userid` may record (every point word for anyone else)."""
        return self.recordable.get(userid) or self.points

    @classmethod
    def load(cls, session: Session, catalogue: Catalogue, limit: int = 200) -> Vocabulary:
        """Every command and point word; up to `limit` students and classes of the roster.

        Hypothesis favours the first element of a list (and shrinks towards it), so each list
        starts with what makes a valid message: a student's point recorded with a number, the
        first student, the first class.
        """
        kinds = {"rate": 0, "score": 1, "count": 2, "document": 3, "level": 4}
        ordered = sorted(catalogue.points, key=lambda p: (p.is_class, kinds.get(p.kind, 5), p.code))
        points = _unique(w for p in ordered for w in (p.short, p.name, *p.aliases))
        levels = _unique(label for p in ordered for label, _ in p.levels)
        students = session.execute(select(Student.name, Student.student_no).order_by(Student.id).limit(limit))
        classes = session.execute(select(SchoolClass.code, SchoolClass.name).order_by(SchoolClass.id).limit(limit))
        recordable = {}
        for userid, roles in session.execute(select(Staff.wecom_userid, Staff.roles).limit(limit)):
            mine = set(roles.split(","))
            words = _unique(w for p in ordered if mine & set(p.recorders) for w in (p.short, *p.aliases))
            if userid and words:
                recordable[userid] = words
        return cls(
            commands=_unique(name for c in registry.commands for name in c.names),
            points=points, levels=levels,
            students=_unique(word for row in students for word in row),
            classes=_unique(word for row in classes for word in row),
            recordable=recordable,
        )


def _unique(words: Iterable[str]) -> tuple[str, ...]:
    """`words` without repeats, in their first order."""
    return tuple(dict.fromkeys(words))


def _joined(*parts: st.SearchStrategy[str], sep: str = " ") -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda words: sep.join(w for w in words if w))


def _value(vocab: Vocabulary) -> st.SearchStrategy[str]:
    plausible = st.integers(0, 100).map(str)
    return st.one_of(
        plausible, plausible, plausible,
        st.sampled_from(NUMBERS),
        st.integers(-5, 130).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(vocab.levels + DOCUMENT_WORDS),
    )


def _ref() -> st.SearchStrategy[str]:
    number = st.one_of(st.integers(0, 12).map(str), st.sampled_from(NUMBERS))
    return st.tuples(st.sampled_from(("#", "# ", "＃", "")), number).map("".join)


def _recording(vocab: Vocabulary, userid: str) -> st.SearchStrategy[str]:
    """`[上周] <point> <target> [<value>] …`, the point mostly one the sender's roles record."""
    student = st.sampled_from(vocab.students)
    target = st.one_of(student, student, student, st.sampled_from(vocab.classes),
                       st.sampled_from(vocab.classes).map(lambda c: f"{c} 全班"))
    pair = _joined(target, st.one_of(_value(vocab), _value(vocab), st.just("")))
    pairs = st.lists(pair, min_size=1, max_size=3, unique=True).map(" ".join)
    point = st.one_of(st.sampled_from(vocab.points_of(userid)), st.sampled_from(vocab.points_of(userid)),
                      st.sampled_from(vocab.points))
    return _joined(st.sampled_from(PERIOD_WORDS[-1:] * 5 + PERIOD_WORDS), point, pairs)


def _command(vocab: Vocabulary) -> st.SearchStrategy[str]:
    note = st.sampled_from(NOTES)
    student = st.sampled_from(vocab.students)
    return st.one_of(
        _joined(st.sampled_from(("撤销", "撤回")), st.one_of(st.just(""), _ref())),
        _joined(st.sampled_from(("处理", "已处理", "误报")), _ref(), note),
        _joined(st.just("预警"), st.one_of(st.just(""), _ref())),
        _joined(st.just("预警"), student, st.sampled_from(CATEGORIES), st.sampled_from(LEVELS), note),
        _joined(st.sampled_from(("进度", "达成度")), _ref(), _value(vocab), note),
        _joined(st.sampled_from(("完成", "任务", "我的任务")), st.one_of(st.just(""), _ref(), st.just("1.1")), note),
        _joined(st.sampled_from(("储值卡", "我的储值卡", "成长卡")), st.one_of(st.just(""), student)),
        _joined(st.sampled_from(("班级卡", "导出")), st.one_of(st.just(""), st.sampled_from(vocab.classes))),
        _joined(st.sampled_from(vocab.commands), st.text(max_size=12)),
    )


def _line(vocab: Vocabulary, userid: str) -> st.SearchStrategy[str]:
    return st.one_of(_recording(vocab, userid), _recording(vocab, userid), _command(vocab), st.text(max_size=30))


@st.composite
def _mutated(draw: st.DrawFn, line: st.SearchStrategy[str]) -> str:
    """A line with up to four edits: a hostile piece inserted, a character dropped, doubled or widened."""
    text = draw(line)
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2, 4)))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.integers(0, 5))
        if edit <= 2:
            text = text[:at] + draw(st.sampled_from(HOSTILE)) + text[at:]
        elif edit == 3 and at < len(text):
            text = text[:at] + text[at + 1:]
        elif edit == 4 and at < len(text):
            text = text[:at] + text[at] * 2 + text[at:]
        elif at < len(text) and "!" <= text[at] <= "~":
            text = text[:at] + chr(ord(text[at]) + 0xFEE0) + text[at + 1:]  # its full-width form
    return text


def _fit(text: str) -> str:
    """`text` cut to MAX_BYTES of UTF-8 (a whole character at the end)."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_BYTES else data[:MAX_BYTES].decode("utf-8", "ignore")


@st.composite
def _shaped(draw: st.DrawFn, line: st.SearchStrategy[str], recording: st.SearchStrategy[str]) -> str:
    """Mostly a line or a few, sometimes a 2,000-character line or 200 lines."""
    shape = draw(st.integers(0, 99))
    if shape < 70:
        lines = [draw(line)]
    elif shape < 92:
        lines = draw(st.lists(line, min_size=2, max_size=8))
    elif shape < 96:  # a 2,000-character line: one line repeated, or a paste of one word
        seed = draw(line) or "全勤率"
        lines = [(seed * (2000 // max(len(seed), 1) + 1))[:2000]]
    else:  # 200 lines: a whole class pasted in, with hostile lines among them
        pool = [draw(recording), *draw(st.lists(line, min_size=2, max_size=5))]
        lines = [pool[i % len(pool)] for i in range(200)]
    separator = draw(st.sampled_from(("\n", "\n", "\r\n", "\n\n")))
    return _fit(separator.join(lines))


def chat_message(vocab: Vocabulary, userid: str) -> st.SearchStrategy[str]:
    """One message's text from `userid`."""
    return _shaped(_mutated(_line(vocab, userid)), _recording(vocab, userid))


def chat(vocab: Vocabulary, userids: tuple[str, ...]) -> st.SearchStrategy[tuple[str, str]]:
    """(sender, text): a message from one of `userids`."""
    # Built once per sender: a strategy is costly to construct, cheap to draw from.
    by_sender = {userid: chat_message(vocab, userid).map(lambda text, u=userid: (u, text)) for userid in userids}
    return st.sampled_from(userids).flatmap(by_sender.__getitem__)
