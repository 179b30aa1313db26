"""The roster snapshot a process answers from: a change is seen once the snapshot's age passes
the TTL, and an unchanged roster is not rebuilt (PostgreSQL)."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from models.db import make_sessionmaker
from models.directory import DirectoryCache
from models.schema import Semester, Staff, Student, TeachingAssignment


@pytest.fixture
def sessions(clean_db):
    return make_sessionmaker(clean_db)


def names(directory, class_id: int) -> list[str]:
    return [s.name for s in directory.students_by_class[class_id]]


def test_a_roster_change_is_seen_after_the_ttl(college, session, sessions):
    cache = DirectoryCache(ttl=0)
    first = cache.get(sessions)
    assert "张三" in names(first, college.cs.id)

    session.scalars(select(Student).where(Student.name == "张三")).one().name = "张三丰"
    session.commit()
    renamed = cache.get(sessions)
    assert "张三丰" in names(renamed, college.cs.id) and "张三" not in names(renamed, college.cs.id)

    # 陈静 starts teaching 会计2301: her scope grows
    assert college.acc.id not in renamed.actor("chenjing").taught_classes
    chen = session.scalars(select(Staff).where(Staff.wecom_userid == "chenjing")).one()
    session.add(TeachingAssignment(staff_id=chen.id, class_id=college.acc.id, course="经济数学"))
    session.commit()
    assert college.acc.id in cache.get(sessions).actor("chenjing").taught_classes

    # a 校历 sheet imported: the first semester runs into February, and the calendar follows it
    assert cache.get(sessions).calendar.term_for(date(2026, 2, 5)).term == 2
    session.add(Semester(year="2025-2026", term=1, start=date(2025, 9, 8), end=date(2026, 2, 10)))
    session.commit()
    assert cache.get(sessions).calendar.term_for(date(2026, 2, 5)).term == 1


def test_within_the_ttl_the_snapshot_is_kept(college, session, sessions):
    cache = DirectoryCache(ttl=3600)
    first = cache.get(sessions)
    session.scalars(select(Student).where(Student.name == "李四")).one().name = "李四海"
    session.commit()
    assert cache.get(sessions) is first
    cache.invalidate()
    assert "李四海" in names(cache.get(sessions), college.cs.id)


def test_an_unchanged_roster_is_not_rebuilt(college, session, sessions):
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("the roster digest is PostgreSQL's; elsewhere the snapshot is rebuilt after the TTL")
    cache = DirectoryCache(ttl=0)
    first = cache.get(sessions)
    assert cache.get(sessions) is first
    # a write elsewhere (a recording) is no roster change
    session.scalars(select(Student).where(Student.name == "王五")).one().name = "王五"
    session.commit()
    assert cache.get(sessions) is first
    session.scalars(select(Student).where(Student.name == "王五")).one().wecom_userid = "wangwu2"
    session.commit()
    second = cache.get(sessions)
    assert second is not first and "wangwu2" in second.students_by_userid
