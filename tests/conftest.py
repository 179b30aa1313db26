"""Fixtures: a real database (SQLite file, or PostgreSQL when TEST_DATABASE_URL is set)
and, when TEST_REDIS_URL is set, a real Redis."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import text

from core.config import ROOT
from models import schema  # noqa: F401  (registers the tables)
from models.catalogue import load_catalogue
from models.db import Base, make_engine, make_sessionmaker

CATALOGUE = ROOT / "models" / "catalogue.toml"


def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return database_url(tmp_path_factory)


@pytest.fixture(scope="session")
def engine(db_url: str):
    eng = make_engine(db_url)
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def _wipe(eng) -> None:
    with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture
def clean_db(engine):
    """An empty database for each test."""
    _wipe(engine)
    yield engine


@pytest.fixture
def session(clean_db):
    maker = make_sessionmaker(clean_db)
    with maker() as s:
        yield s


@pytest.fixture
def college(session):
    """The small college of tests/fakes/factories.py in the test's empty database (王芳 teaches
    计算机2301, 张三 studies there, …); a module that needs another college defines its own."""
    from tests.fakes.factories import small_college

    return small_college(session)


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue(CATALOGUE)


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    return os.environ.get("TEST_REDIS_URL")


@pytest.fixture(params=["redis", "memory"])
def token_store(request, redis_url):
    """Where a WeChat API client keeps its access token: a Redis client (the Redis pass), or None
    (the in-process fallback); a test taking it runs once with each."""
    if request.param == "memory":
        yield None
        return
    if not redis_url:
        pytest.skip("TEST_REDIS_URL is not set")
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def fresh_redis(redis_url):
    """Message claims and tokens left by an earlier run would make this run's messages look like retries."""
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()


# A Wednesday in the middle of the first semester: no week, month or term edge nearby.
TODAY = date(2025, 11, 19)


@pytest.fixture
def today() -> date:
    return TODAY


@pytest.fixture
def root() -> Path:
    return ROOT
