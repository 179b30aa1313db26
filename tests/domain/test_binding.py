"""The binding rules (models/binding.py): codes random, hashed, expiring, single use, voided by a
newer one; the lockout; four parents at most; one student openid; audit rows; who a follower is."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from handlers.binding import replaced_notice
from models.authz import student_view
from models.binding import bind, follower_identity, issue_codes, unbind
from models.db import Base, make_engine, make_sessionmaker
from models.schema import AuditLog, BindCode, FollowerBinding, OutboxMessage, Student

SECRET = "test-secret"
T0 = datetime(2025, 11, 19, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def sid(session, no: str) -> int:
    return session.scalar(select(Student.id).where(Student.student_no == no))


def issue(session, no: str = "2023010101", kind: str = "student", now: datetime = T0) -> str:
    (code,) = issue_codes(session, [sid(session, no)], kind, secret_key=SECRET, days=7, now=now,
                          issued_by="王芳(wangfang)", source_msg="m1")
    session.commit()
    return code.code


def try_bind(session, openid: str, code: str, no: str = "2023010101", now: datetime = T0):
    result = bind(session, openid, no, code, secret_key=SECRET, now=now, tell_replaced=replaced_notice,
                  source_msg=f"msg-{openid}")
    session.commit()
    return result


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10 ** 8:08d}"


def every_stored_value(session) -> str:
    """Every row of every table, as text."""
    out = []
    for table in Base.metadata.sorted_tables:
        out += [repr(tuple(row)) for row in session.execute(text(f'SELECT * FROM "{table.name}"'))]
    return "\n".join(out)


def test_codes_are_random_digits_stored_only_as_their_hmac(college, session):
    ids = [sid(session, no) for no in ("2023010101", "2023010102", "2023010103")]
    first = issue_codes(session, ids, "student", secret_key=SECRET, days=7, now=T0, issued_by="王芳(wangfang)")
    again = issue_codes(session, ids, "student", secret_key=SECRET, days=7, now=T0, issued_by="王芳(wangfang)")
    session.commit()
    codes = [c.code for c in first + again]
    assert all(len(c) == 8 and c.isdigit() for c in codes)
    assert len(set(codes)) == len(codes)  # not a function of the student: each issue is new
    rows = {r.id: r for r in session.scalars(select(BindCode))}
    assert len(rows) == 6
    newest = sorted(rows.values(), key=lambda r: r.id)[3:]
    for issued, row in zip(again, newest, strict=True):
        expected = hmac.new(SECRET.encode(), f"{row.student_id}:student:{issued.code}".encode(),
                            hashlib.sha256).hexdigest()
        assert row.code_hash == expected
    stored = every_stored_value(session)
    assert not [c for c in codes if c in stored]


def test_a_code_expires_after_the_configured_days(college, session):
    code = issue(session)
    assert try_bind(session, "oLate", code, now=T0 + timedelta(days=7)).outcome == "refused"
    assert try_bind(session, "oInTime", code, now=T0 + timedelta(days=7) - timedelta(minutes=1)).bound


def test_a_code_binds_once(college, session):
    code = issue(session)
    first = try_bind(session, "oA", code)
    assert first.bound and first.kind == "student" and first.student_name == "张三"
    assert try_bind(session, "oB", code).outcome == "refused"
    row = session.scalar(select(BindCode))
    assert row.used_by == "oA" and row.used_at is not None


def test_a_new_code_voids_the_older_unused_one_of_the_same_kind(college, session):
    old = issue(session)
    parent = issue(session, kind="parent")
    new = issue(session)
    assert try_bind(session, "oA", old).outcome == "refused"
    assert try_bind(session, "oA", new).bound
    assert try_bind(session, "oMum", parent).bound  # the parent code is another kind: still open
    voided = session.scalars(select(BindCode).where(BindCode.voided_at.is_not(None))).all()
    assert len(voided) == 1 and voided[0].kind == "student"


def test_five_wrong_tries_within_an_hour_lock_for_an_hour_from_the_fifth(college, session):
    code = issue(session)
    bad = wrong(code)
    times = [T0 + timedelta(minutes=10 * i) for i in range(5)]  # the fifth at T0+40min
    results = [try_bind(session, "oX", bad, now=t) for t in times]
    assert [r.outcome for r in results] == ["refused"] * 5
    assert [r.until for r in results[:4]] == [None] * 4
    release = times[4] + timedelta(hours=1)
    assert results[4].until == release
    during = try_bind(session, "oX", code, now=release - timedelta(seconds=1))
    assert during.outcome == "locked" and during.until == release
    assert try_bind(session, "oY", wrong(bad), no="2023010102", now=times[4]).until is None  # per openid
    after = try_bind(session, "oX", code, now=release)
    assert after.bound


def test_wrong_tries_spread_over_more_than_an_hour_do_not_lock(college, session):
    code = issue(session)
    for i in range(6):
        result = try_bind(session, "oSlow", wrong(code), now=T0 + timedelta(minutes=16 * i))
        assert result.outcome == "refused" and result.until is None
    assert try_bind(session, "oSlow", code, now=T0 + timedelta(minutes=100)).bound


def test_at_most_four_parents_and_a_full_house_leaves_the_code_unused(college, session):
    for n in range(4):
        assert try_bind(session, f"oP{n}", issue(session, kind="parent")).bound
    code = issue(session, kind="parent")
    full = try_bind(session, "oP4", code)
    assert full.outcome == "parents_full"
    assert session.scalar(select(BindCode).order_by(BindCode.id.desc()).limit(1)).used_at is None
    unbind(session, "oP0", actor="张三家长(oP0)")
    session.commit()
    assert try_bind(session, "oP4", code).bound
    assert len(session.scalars(select(FollowerBinding).where(FollowerBinding.kind == "parent")).all()) == 4


def test_a_new_student_binding_replaces_the_old_and_tells_its_owner(college, session):
    assert try_bind(session, "oOld", issue(session)).bound
    result = try_bind(session, "oNew", issue(session))
    assert result.bound and result.replaced is not None and result.replaced.openid == "oOld"
    bindings = session.scalars(select(FollowerBinding)).all()
    assert [(b.openid, b.kind) for b in bindings] == [("oNew", "student")]
    [push] = session.scalars(select(OutboxMessage)).all()
    assert push.recipient == "oOld" and push.channel == "mp" and push.status == "pending"
    assert push.body == replaced_notice(result.replaced) and "张三" in push.body


def test_binding_again_moves_an_openid_to_its_new_student(college, session):
    assert try_bind(session, "oA", issue(session)).bound
    moved = try_bind(session, "oA", issue(session, "2023010102"), no="2023010102")
    assert moved.bound and moved.student_name == "李四" and moved.replaced is None
    [row] = session.scalars(select(FollowerBinding)).all()
    assert row.student_id == sid(session, "2023010102")
    assert session.scalars(select(OutboxMessage)).all() == []  # nobody else was displaced


def test_every_issue_bind_and_unbind_is_audited_without_the_code(college, session):
    old = issue(session)
    code = issue(session)
    assert try_bind(session, "oOld", code).bound
    assert try_bind(session, "oNew", issue(session)).bound
    assert unbind(session, "oNew", actor="张三(oNew)", source_msg="m9") is not None
    session.commit()
    rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [(r.action, r.entity) for r in rows] == [
        ("issue_bind_code", "bind_code"), ("issue_bind_code", "bind_code"), ("bind", "follower_binding"),
        ("issue_bind_code", "bind_code"), ("replace_binding", "follower_binding"), ("bind", "follower_binding"),
        ("unbind", "follower_binding"),
    ]
    assert rows[0].actor == "王芳(wangfang)" and rows[0].source_msg == "m1"
    assert '"voided"' in rows[1].old_value  # the second issue voided the first code
    assert rows[2].actor == "张三(oOld)" and '"oOld"' in rows[2].new_value and rows[2].source_msg == "msg-oOld"
    assert '"replaced_by": "oNew"' in rows[4].new_value
    assert rows[6].source_msg == "m9"
    assert all(old not in (r.old_value or "") + (r.new_value or "") for r in rows)
    assert all(code not in (r.old_value or "") + (r.new_value or "") for r in rows)


def test_who_a_follower_is(college, session):
    assert try_bind(session, "oSelf", issue(session)).bound
    assert try_bind(session, "oMum", issue(session, kind="parent")).bound
    zhang = sid(session, "2023010101")
    me = follower_identity(session, "oSelf")
    assert me.is_student and me.student_id == zhang and me.userid == "oSelf" and me.follower
    mum = follower_identity(session, "oMum")
    assert mum.is_parent and not mum.is_student and not mum.is_staff and mum.audit_name == "张三家长(oMum)"
    card = student_view(mum, zhang, college.cs.id)
    assert card.sensitive is False and len(card.domains) == 3
    assert not student_view(mum, sid(session, "2023010102"), college.cs.id).domains  # no other child
    nobody = follower_identity(session, "oNobody")
    assert nobody.is_unbound_follower and not nobody.is_student and not nobody.is_parent


def test_two_concurrent_binds_with_one_code_bind_once(college, session, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks and concurrent transactions: PostgreSQL")
    code = issue(session)
    own = make_engine(db_url)  # its own pool: the shared engine keeps no extra connection afterwards
    maker = make_sessionmaker(own)
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def attempt(openid: str) -> None:
        with maker() as s:
            start.wait()
            outcomes[openid] = bind(s, openid, "2023010101", code, secret_key=SECRET, now=T0,
                                    tell_replaced=replaced_notice).outcome
            s.commit()

    threads = [threading.Thread(target=attempt, args=(o,)) for o in ("oA", "oB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    own.dispose()
    assert sorted(outcomes.values()) == ["bound", "refused"]
    session.expire_all()
    assert len(session.scalars(select(FollowerBinding)).all()) == 1
