"""A warning left unhandled is escalated on the first run after its delay, however many runs were missed."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from scheduler.risk_jobs import warning_escalation
from tests.dispatch.test_warnings import TODAY, messages, recipients, run, warnings
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college


@pytest.fixture
def svc(session, db_url, redis_url):
    small_college(session)
    return make_service(db_url, TODAY, redis_url)


def test_an_escalation_missed_by_days_of_scheduler_downtime_goes_out_on_the_first_run(svc, session, catalogue):
    say(svc, "sunli", "违纪频次 王五")
    [w] = warnings(session)
    opened = len(messages(session))
    # Opened at noon on the 19th, due for escalation three days later; no run from the 21st to the 24th.
    result = run(warning_escalation, session, catalogue, TODAY + timedelta(days=6), time(12, 25))
    assert result.startswith("1 warnings escalated")
    assert recipients(session, w.id) == {"wangfang": ["opened"], "liuwei": ["opened"], "sunli": ["escalated"],
                                         "wujun": ["escalated"]}
    escalated = messages(session)[opened:]
    assert len(escalated) == 2 and all("预警 #1 已 6 天无人处理" in m.body for m in escalated)
    # The following runs, that day and the next days, send nothing twice.
    run(warning_escalation, session, catalogue, TODAY + timedelta(days=6), time(13, 25))
    for days in (7, 8, 14):
        assert run(warning_escalation, session, catalogue, TODAY + timedelta(days=days), time(8, 25)).startswith(
            "0 warnings")
    assert len(messages(session)) == opened + 2
