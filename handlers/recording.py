"""Recording score points by message, and undoing them.

A message is checked whole before anything is written: one bad line and nothing
is recorded, and the reply names every bad line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import select

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.authz import may_record, recordable_classes
from models.catalogue import ScorePoint
from models.directory import ClassInfo, Directory, StudentInfo
from models.evaluation import needs_evaluation
from models.numbers import ROW_ID_MAX, is_digits, row_id, shown
from models.periods import PREVIOUS_WORDS, PeriodError, period_label, place
from models.schema import RecordingBatch, SchoolClass, ScoreEntry, Student
from models.scores import (
    FIRST_ID,
    LAST_ID,
    PlannedEntry,
    Processed,
    fill_ids,
    last_batch,
    record_entries,
    revoke,
)

NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?%?$")
TRAILING_NUMBER = re.compile(r"^(.*?[^\d.])([+-]?\d+(?:\.\d+)?%?)$")
SUBMITTED = {"已提交", "提交", "已交", "交", "是", "有", "1"}
NOT_SUBMITTED = {"未提交", "未交", "否", "无", "0"}
WHOLE_CLASS = "全班"
MAX_COUNT = 20  # a count added by one message: more is surely a typo


class LineError(ValueError):
    """A line that cannot be recorded; the message says why, in Chinese."""


@dataclass
class Roster:
    """The students and classes a message may name, from the process's roster snapshot."""

    directory: Directory
    students_by_no: dict[str, StudentInfo] = field(default_factory=dict)
    students_by_name: dict[str, list[StudentInfo]] = field(default_factory=dict)
    _shared: bool = False  # the dicts are the directory's own (one class): copy before adding to them

    @classmethod
    def load(cls, ctx: Context) -> Roster:
        return cls(ctx.directory)

    def load_students(self, ctx: Context, class_ids: set[int] | None) -> None:
        """Students of the classes in scope (None: the whole college)."""
        if not self.students_by_no and class_ids is not None and len(class_ids) == 1:
            # The everyday case, a teacher's one class: the directory's maps of that class, as they are.
            self.students_by_no, self.students_by_name = self.directory.class_roster(next(iter(class_ids)))
            self._shared = True
            return
        if self._shared:
            self.students_by_no = dict(self.students_by_no)
            self.students_by_name = {name: list(group) for name, group in self.students_by_name.items()}
            self._shared = False
        for s in self.directory.students_in(class_ids):
            self.students_by_no[s.student_no] = s
            self.students_by_name.setdefault(s.name, []).append(s)

    def class_of(self, token: str) -> ClassInfo | None:
        return self.directory.class_keys.get(token)


def parse_value(point: ScorePoint, token: str | None) -> float:
    """A typed value checked against the point's kind and range."""
    if token is None:
        if point.kind == "count":
            return 1.0
        if point.kind == "document":
            return 1.0
        raise LineError(f"缺少{point.short}的值")
    if point.kind == "level":
        index = point.level_index(token)
        if index is None:
            raise LineError(f"{point.short}只能是：{'、'.join(label for label, _ in point.levels)}")
        return float(index)
    if point.kind == "document":
        if token in SUBMITTED:
            return 1.0
        if token in NOT_SUBMITTED:
            return 0.0
        raise LineError(f"{point.short}请填“已提交”或“未提交”")
    if not NUMBER.match(token):
        raise LineError(f"“{shown(token)}”不是数值")
    percent = token.endswith("%")
    value = float(token.rstrip("%"))
    if not math.isfinite(value):  # digits enough to overflow a float: no count or score is that large
        raise LineError(f"“{shown(token)}”太大，不是有效的数值")
    if point.kind == "count":
        if percent or value != int(value) or not 1 <= value <= MAX_COUNT:
            raise LineError(f"{point.short}是次数，请填 1–{MAX_COUNT} 的整数（不填即 1 次）")
        return value
    if percent and point.kind != "rate":
        raise LineError(f"{point.short}是分数，不用百分号")
    lo, hi = point.range
    if not lo <= value <= hi:
        unit = "%" if point.kind == "rate" else ""
        raise LineError(f"{point.short}应在 {lo:g}{unit}–{hi:g}{unit} 之间，收到 {shown(token)}")
    return value


def is_value_token(point: ScorePoint, token: str) -> bool:
    if point.kind == "level":
        return point.level_index(token) is not None
    if point.kind == "document":
        return token in SUBMITTED or token in NOT_SUBMITTED
    return bool(NUMBER.match(token))


@dataclass
class LinePlan:
    """One line's entries, or its error."""

    number: int
    text: str
    point: ScorePoint | None = None
    entries: list[PlannedEntry] = field(default_factory=list)
    summary: str = ""
    error: str | None = None


class LineParser:
    """Turns one line of a recording message into planned entries (or a LineError)."""

    def __init__(self, ctx: Context, roster: Roster) -> None:
        self.ctx = ctx
        self.roster = roster
        self._loaded_scopes: list[set[int] | None] = []

    def _ensure_students(self, scope: set[int] | None) -> None:
        if scope in self._loaded_scopes or None in self._loaded_scopes:
            return
        self.roster.load_students(self.ctx, scope)
        self._loaded_scopes.append(scope)

    def parse(self, name: str, points: dict[str, ScorePoint], rest: str) -> tuple[ScorePoint, list[PlannedEntry], str]:
        tokens = rest.split()
        previous = None
        for word, unit in PREVIOUS_WORDS.items():
            if word in tokens:
                tokens.remove(word)
                previous = unit
        if not tokens:
            raise LineError("缺少学生或班级")
        klass = self.roster.class_of(tokens[0])
        if klass is not None:
            if len(tokens) > 1 and tokens[1] == WHOLE_CLASS:
                return self._whole_class(name, points, klass, tokens[2:], previous)
            return self._class_point(name, points, klass, tokens[1:], previous)
        return self._students(name, points, tokens, previous)

    # -- targets -------------------------------------------------------------

    def _individual(self, name: str, points: dict[str, ScorePoint]) -> ScorePoint:
        point = points.get("个人")
        if point is None:
            raise LineError(f"“{name}”是班级采分点，请写班级编号或班级名称")
        return point

    def _placement(self, point: ScorePoint, klass: ClassInfo, previous: str | None):  # noqa: ANN202
        try:
            return place(point.period, self.ctx.today, self.ctx.calendar, previous, klass.grade)
        except PeriodError as exc:
            raise LineError(str(exc)) from exc

    def _class_point(self, name: str, points: dict[str, ScorePoint], klass: ClassInfo,
                     tokens: list[str], previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], str]:
        point = points.get("班级")
        if point is None:
            raise LineError(f"{name}是学生个人采分点；给全班记录请写：{name} {klass.code} 全班 <值>")
        if point.derived is not None:
            source = self.ctx.catalogue.by_code[point.derived.of]
            raise LineError(
                f"班级的{point.short}由学生的{source.short}自动计算，不需要录入"
                + (f"；给全班记录请写：{source.short} {klass.code} 全班 <值>"
                   if source.short == point.short or name in source.aliases else ""))
        if not may_record(self.ctx.actor, point, klass.id):
            raise LineError(f"你不能为{klass.name}录入{point.short}（采分主体：{'、'.join(point.recorders)}）")
        if len(tokens) > 1:
            raise LineError("班级采分点只需要一个值")
        value = parse_value(point, tokens[0] if tokens else None)
        at = self._placement(point, klass, previous)
        entry = PlannedEntry(point, None, klass.id, klass.name, value, at.occurred_on, at.period_key,
                             at.semester_key)
        return point, [entry], f"{point.short} {klass.name} {point.display_value(value)}"

    def _resolve_student(self, token: str, scope: set[int] | None, point: ScorePoint) -> StudentInfo:
        self._ensure_students(scope)
        if token in self.roster.students_by_no:
            return self.roster.students_by_no[token]
        matches = self.roster.students_by_name.get(token, [])
        if scope is not None:
            matches = [s for s in matches if s.class_id in scope]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            options = "、".join(f"{s.student_no}（{s.school_class.name}）" for s in matches)
            raise LineError(f"有 {len(matches)} 名学生叫“{token}”，请改用学号：{options}")
        exists = self.ctx.session.scalar(
            select(Student).where((Student.name == token) | (Student.student_no == token)).limit(1))
        if exists is not None:
            raise LineError(f"{token}不在你可录入{point.short}的班级")
        raise LineError(f"找不到学生“{token}”")

    def _students(self, name: str, points: dict[str, ScorePoint], tokens: list[str],
                  previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], str]:
        point = self._individual(name, points)
        scope = recordable_classes(self.ctx.actor, point)
        if scope is not None and not scope:
            raise LineError(f"你不能录入{point.short}（采分主体：{'、'.join(point.recorders)}）")
        pairs = self._pairs(point, tokens, scope)
        entries, shown, seen = [], [], set()
        for student, raw in pairs:
            if student.id in seen and not point.accumulates:
                raise LineError(f"{student.name}在这一行出现了两次")
            seen.add(student.id)
            if not may_record(self.ctx.actor, point, student.class_id):
                raise LineError(f"你不能为{student.name}录入{point.short}")
            value = parse_value(point, raw)
            at = self._placement(point, student.school_class, previous)
            entries.append(PlannedEntry(point, student.id, None, student.name, value, at.occurred_on,
                                        at.period_key, at.semester_key))
            shown.append(f"{student.name} {point.display_value(value)}")
        return point, entries, f"{point.short} {'、'.join(shown)}"

    def _pairs(self, point: ScorePoint, tokens: list[str],
               scope: set[int] | None) -> list[tuple[StudentInfo, str | None]]:
        """Read `<学生> [<值>] <学生> [<值>] …`, splitting 张三95 into 张三 and 95."""
        self._ensure_students(scope)
        pairs: list[tuple[StudentInfo, str | None]] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if is_value_token(point, token) and token not in self.roster.students_by_no:
                if pairs and pairs[-1][1] is None:
                    pairs[-1] = (pairs[-1][0], token)
                    i += 1
                    continue
                raise LineError(f"值“{token}”前缺少学生")
            glued = TRAILING_NUMBER.match(token)
            try:
                student = self._resolve_student(token, scope, point)
                value = None
            except LineError:
                if not glued:
                    raise
                student = self._resolve_student(glued.group(1), scope, point)
                value = glued.group(2)
            if value is None and i + 1 < len(tokens) and self._reads_as_value(point, tokens[i + 1]):
                value = tokens[i + 1]
                i += 1
            pairs.append((student, value))
            i += 1
        return pairs

    def _reads_as_value(self, point: ScorePoint, token: str) -> bool:
        """After a student: a value, unless it names a student (so 张三 也许 reports a bad value)."""
        if token in self.roster.students_by_no:
            return False
        if is_value_token(point, token):
            return True
        glued = TRAILING_NUMBER.match(token)
        names = self.roster.students_by_name
        return token not in names and not (glued and glued.group(1) in names)

    def _whole_class(self, name: str, points: dict[str, ScorePoint], klass: ClassInfo,
                     tokens: list[str], previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], str]:
        point = self._individual(name, points)
        if not may_record(self.ctx.actor, point, klass.id):
            raise LineError(f"你不能为{klass.name}录入{point.short}（采分主体：{'、'.join(point.recorders)}）")
        default = None
        if tokens and is_value_token(point, tokens[0]):
            default, tokens = tokens[0], tokens[1:]
        base = parse_value(point, default)
        exceptions = self._pairs(point, tokens, {klass.id})
        except_ids = {s.id: raw for s, raw in exceptions}
        for s, raw in exceptions:
            if s.class_id != klass.id:
                raise LineError(f"{s.name}不在{klass.name}")
            if raw is None:
                raise LineError(f"{s.name}缺少值")
        at = self._placement(point, klass, previous)
        students = self.ctx.directory.students_by_class.get(klass.id, [])
        if not students:
            raise LineError(f"{klass.name}没有学生")
        entries = []
        for s in students:
            value = parse_value(point, except_ids[s.id]) if s.id in except_ids else base
            entries.append(PlannedEntry(point, s.id, None, s.name, value, at.occurred_on, at.period_key,
                                        at.semester_key))
        shown = f"{point.short} {klass.name} 全班 {len(students)} 人 {point.display_value(base)}"
        if exceptions:
            shown += "，其中 " + "、".join(
                f"{s.name} {point.display_value(parse_value(point, raw))}" for s, raw in exceptions)
        return point, entries, shown


def split_previous_word(line: str) -> tuple[str, str]:
    """`上周 全勤率 …` → ("上周", "全勤率 …"): the period word may lead the line."""
    for word in sorted(PREVIOUS_WORDS, key=len, reverse=True):
        if line.startswith(word):
            return word, line[len(word):].strip()
    return "", line


def plan_message(ctx: Context, text: str) -> list[LinePlan]:
    """Check every line; each plan has entries or an error."""
    roster = Roster.load(ctx)
    parser = LineParser(ctx, roster)
    plans = []
    last: tuple[str, dict[str, ScorePoint]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        plan = LinePlan(number, line)
        previous_word, line_body = split_previous_word(line)
        match = ctx.catalogue.match_prefix(line_body)
        if match is not None:
            name, points = match
            rest = f"{previous_word} {line_body[len(name):]}"
            last = match
        elif last is not None:
            name, points = last  # a continuation line: same point as the line above
            rest = line
        else:
            plan.error = "不认识的采分点或命令"
            plans.append(plan)
            continue
        try:
            plan.point, plan.entries, plan.summary = parser.parse(name, points, rest)
        except LineError as exc:
            plan.error = str(exc)
        plans.append(plan)
    return plans


def record_message(msg: IncomingMessage, text: str, ctx: Context) -> Reply:
    """The fallback handler: a message that starts with a point name records it."""
    if ctx.catalogue.match_prefix(split_previous_word(text)[1]) is None:
        return Reply(render("chat/unknown_command.txt", text=text.splitlines()[0][:20]))
    if not ctx.actor.is_staff:
        return Reply(render("chat/student_cannot_record.txt"))
    plans = plan_message(ctx, text)
    bad = [p for p in plans if p.error]
    if bad:
        return Reply(render("chat/record_rejected.txt", bad=bad, total=len(plans)))
    planned = [e for p in plans for e in p.entries]
    periods = sorted({(p.point.period, e.period_key) for p in plans for e in p.entries})
    reply = render("chat/recorded.txt", plans=plans, count=len(planned), first=FIRST_ID, last=LAST_ID,
                   periods=[period_label(period, key) for period, key in periods])
    work = ctx.work
    processed = Processed(ctx.processed_key, msg.sender, reply) if ctx.processed_key else None
    evaluate = needs_evaluation(ctx.catalogue, planned)  # early warnings: checked after the commit
    # PostgreSQL: one autocommitted statement; elsewhere the pipeline commits the session.
    write = work.recordings.record if work.recordings else partial(record_entries, ctx.session)
    recorded = write(ctx.actor.audit_name, ctx.actor.staff_id, planned, text=msg.text, source=msg.channel,
                     source_msg=msg.msg_key, evaluate=evaluate, processed=processed)
    work.processed_written = processed is not None
    work.queued_evaluation = evaluate
    return Reply(fill_ids(reply, recorded.first, recorded.last))


registry.fallback = record_message


@registry.command("撤销", "撤回", audience="staff", summary="撤销 / 撤销 #N：撤回最近一次录入（或第 N 条）")
def undo(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Take back the sender's last recording, or one entry #N."""
    session, actor = ctx.session, ctx.actor
    assert actor.staff_id is not None
    number = args.lstrip("#").strip()
    if number:
        if not is_digits(number):
            return Reply(render("chat/undo_usage.txt"))
        entry_id = row_id(number)
        if entry_id is None:
            return Reply(render("chat/bad_number.txt", number=shown(number), max=ROW_ID_MAX, command="撤销"))
        entry = session.get(ScoreEntry, entry_id)
        if entry is None or entry.recorder_id != actor.staff_id:
            return Reply(render("chat/undo_not_found.txt", number=number))
        if entry.revoked_at is not None:
            return Reply(render("chat/undo_already.txt", number=number))
        entries = [entry]
    else:
        batch = last_batch(session, actor.staff_id)
        if batch is None:
            return Reply(render("chat/undo_nothing.txt"))
        entries = list(session.scalars(select(ScoreEntry).where(
            ScoreEntry.batch_id == batch.id, ScoreEntry.revoked_at.is_(None))))
    revoke(session, actor.audit_name, actor.staff_id, entries, msg.msg_key)
    session.flush()
    for batch_id in {e.batch_id for e in entries}:
        live = session.scalar(select(ScoreEntry.id).where(
            ScoreEntry.batch_id == batch_id, ScoreEntry.revoked_at.is_(None)).limit(1))
        if live is None:
            session.get(RecordingBatch, batch_id).revoked_at = entries[0].revoked_at
    lines = _describe(ctx, entries)
    return Reply(render("chat/undone.txt", lines=lines, count=len(entries)))


def _describe(ctx: Context, entries: list[ScoreEntry]) -> list[str]:
    """Short lines like "全勤率 张三 95%" for a reply (whole classes folded into one line)."""
    by_point: dict[str, list[ScoreEntry]] = {}
    for e in entries:
        by_point.setdefault(e.point_code, []).append(e)
    out = []
    for code, group in by_point.items():
        point = ctx.catalogue.by_code[code]
        if len(group) > 6:
            out.append(f"{point.short} {len(group)} 条")
            continue
        names = []
        for e in group:
            who = ctx.session.get(Student, e.student_id).name if e.student_id else \
                ctx.session.get(SchoolClass, e.class_id).name
            names.append(f"{who} {point.display_value(e.value)}")
        out.append(f"{point.short} {'、'.join(names)}")
    return out
