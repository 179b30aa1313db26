"""The pages (H5) over HTTP with the Flask test client: signing in by a link, the session cookie,
who may see which page, and that a page shows the chat's numbers and never a sensitive point to a
viewer who may not see it."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from datetime import time as clock_time
from zoneinfo import ZoneInfo

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from bot import create_app
from bot import service as runtime
from bot.pages.auth import COOKIE
from core.config import load_settings
from models.page_links import LINK_SALT, page_link
from models.schema import FollowerBinding, SchoolClass, Staff, Student
from tests.fakes.chat import say

BASE = "https://czk.example.edu.cn"


@pytest.fixture
def svc(college, db_url, today, redis_url):
    # The roster is checked at every request (a snapshot kept 0 s): a change is seen at once.
    settings = load_settings({"database_url": db_url, "redis_url": redis_url, "secret_key": "test",
                              "public_base_url": BASE, "roster_cache_seconds": 0.0})
    tz = ZoneInfo(settings.timezone)
    return runtime.make_service(settings, clock=lambda: datetime.combine(today, clock_time(10, 0), tz))


@pytest.fixture
def app(svc):
    return create_app(service=svc)


@pytest.fixture
def recorded(svc):
    """A few points for 计算机2301, a sensitive one among them, and a 心理健康 warning on 张三."""
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95 李四 80 王五 70")
    assert "已记录" in say(svc, "chenjing", "作业完成率 张三 90 李四 60")
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三 2")
    assert "心理健康预警 #" in say(svc, "wangfang", "预警 张三 心理 最近情绪低落")
    return svc


def local(url: str) -> str:
    assert url.startswith(BASE + "/")
    return url[len(BASE):]


def open_as(app, userid: str, path: str, channel: str = "wecom"):
    """A browser that opened `path` from a link signed for `userid`: (client, final response)."""
    client = app.test_client()
    first = client.get(local(page_link(app.extensions["czk"].settings, channel, userid, path)))
    assert first.status_code == 302
    return client, client.get(first.headers["Location"])


def html(response) -> str:
    return response.get_data(as_text=True)


# ── signing in ───────────────────────────────────────────────────────────────


def test_a_link_signs_in_and_drops_the_token(app) -> None:
    url = page_link(app.extensions["czk"].settings, "wecom", "zhangsan", "/h5/card")
    assert url.startswith(f"{BASE}/h5/card?t=")
    client = app.test_client()
    first = client.get(local(url))
    assert first.status_code == 302 and first.headers["Location"] == "/h5/card"
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {f.strip().split("=")[0].lower() for f in cookie.split(";")}
    assert {"httponly", "secure"} <= flags and "SameSite=Lax" in cookie and "Path=/h5" in cookie
    assert f"Max-Age={12 * 3600}" in cookie
    page = client.get("/h5/card")
    assert page.status_code == 200 and "张三的储值卡" in html(page)
    assert "?t=" not in html(page) and page.headers["Cache-Control"] == "private, no-store"


def test_other_query_parameters_survive_the_redirect(app) -> None:
    client = app.test_client()
    url = page_link(app.extensions["czk"].settings, "wecom", "zhangsan", "/h5/card?from=push")
    assert client.get(local(url)).headers["Location"] == "/h5/card?from=push"


def test_a_changed_token_is_403_and_signs_no_one_in(app) -> None:
    url = local(page_link(app.extensions["czk"].settings, "wecom", "zhangsan", "/h5/card"))
    client = app.test_client()
    for bad in (url[:-2] + ("AA" if not url.endswith("AA") else "BB"), url.replace("t=", "t=x"), "/h5/card?t="):
        response = client.get(bad)
        assert response.status_code == 403 and "链接无效" in html(response)
        assert "Set-Cookie" not in response.headers
    assert client.get("/h5/card").status_code == 401


def test_a_token_for_someone_else_cannot_be_made_without_the_key(app) -> None:
    forged = URLSafeTimedSerializer("not-our-key", salt=LINK_SALT).dumps({"c": "wecom", "u": "wangfang"})
    assert app.test_client().get(f"/h5/card/2023010101?t={forged}").status_code == 403


def test_an_expired_link_is_403(app) -> None:
    hours = app.extensions["czk"].settings.page_link_hours

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - hours * 3600 - 60

    old = URLSafeTimedSerializer("test", salt=LINK_SALT, signer=Then).dumps({"c": "wecom", "u": "zhangsan"})
    response = app.test_client().get(f"/h5/card?t={old}")
    assert response.status_code == 403 and "已过期" in html(response) and "张三" not in html(response)

    class Recent(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - hours * 3600 + 60

    fresh = URLSafeTimedSerializer("test", salt=LINK_SALT, signer=Recent).dumps({"c": "wecom", "u": "zhangsan"})
    assert app.test_client().get(f"/h5/card?t={fresh}").status_code == 302


def test_without_a_session_the_page_says_how_to_open_it(app) -> None:
    response = app.test_client().get("/h5/card")
    assert response.status_code == 401 and "从消息里的链接打开" in html(response)


def test_a_changed_session_cookie_is_no_session(app) -> None:
    client, _page = open_as(app, "zhangsan", "/h5/card")
    value = client.get_cookie(COOKIE, path="/h5").value
    client.set_cookie(COOKIE, value[:-3] + "abc", path="/h5")
    assert client.get("/h5/card").status_code == 401
    session = URLSafeTimedSerializer("test", salt="page-session").dumps({"c": "wecom", "u": "wangfang"})
    link = URLSafeTimedSerializer("test", salt=LINK_SALT).dumps({"c": "wecom", "u": "wangfang"})
    client.set_cookie(COOKIE, link, path="/h5")  # a link token is not a session, nor the reverse
    assert client.get("/h5/card/2023010101").status_code == 401
    assert app.test_client().get(f"/h5/card?t={session}").status_code == 403


def test_the_viewer_is_identified_again_on_every_request(app, session, college) -> None:
    client, page = open_as(app, "wangfang", "/h5/card/2023010101")
    assert page.status_code == 200
    # 王芳 is no longer 计算机2301's 班主任: the same session no longer opens its students.
    klass = session.get(SchoolClass, college.cs.id)
    klass.head_teacher_id = session.scalar(select(Staff.id).where(Staff.wecom_userid == "heping"))
    session.commit()
    assert client.get("/h5/card/2023010101").status_code == 403
    # And gone from the roster: refused, the session forgotten.
    session.delete(session.scalar(select(Staff).where(Staff.wecom_userid == "wangfang")))
    session.commit()
    gone = client.get("/h5/card/2023010101")
    assert gone.status_code == 403 and "名册里找不到你" in html(gone)
    assert f"{COOKIE}=;" in gone.headers["Set-Cookie"]


def test_a_console_link_accepts_a_staff_number(app) -> None:
    _client, page = open_as(app, "T001", "/h5/class/计算机2301", channel="console")
    assert page.status_code == 200 and "计算机2301 · 班级卡" in html(page)


def test_an_official_account_viewer_unknown_until_bound(app) -> None:
    _client, page = open_as(app, "oOPENID-not-bound", "/h5/card", channel="mp")
    assert page.status_code == 403


def test_a_bound_parent_sees_the_childs_card_without_sensitive_points(app, recorded, session, college) -> None:
    zhang = session.scalar(select(Student.id).where(Student.student_no == "2023010101"))
    session.add_all([FollowerBinding(openid="oPARENT", student_id=zhang, kind="parent"),
                     FollowerBinding(openid="oSTUDENT", student_id=zhang, kind="student")])
    session.commit()
    client, page = open_as(app, "oPARENT", "/h5/card", channel="mp")
    assert page.status_code == 200 and "张三的储值卡" in html(page) and "全勤率" in html(page)
    assert "心理" not in html(page) and "未处理的预警" not in html(page)
    assert shown_total(html(page)) == re.search(r"总分 (\S+)", say(recorded, "zhangsan", "储值卡")).group(1)
    assert client.get("/h5/card/2023010101").status_code == 200
    assert client.get("/h5/card/2023010102").status_code == 403
    _client, own = open_as(app, "oSTUDENT", "/h5/card", channel="mp")
    assert own.status_code == 200 and "心理辅导频次" in html(own)


# ── who sees what ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("userid", "path"), [
    ("chenjing", "/h5/dashboard"),  # 任课教师
    ("wangfang", "/h5/dashboard"),  # 班主任
    ("zhangsan", "/h5/dashboard"),  # a student
    ("heping", "/h5/card/2023010101"),  # 班主任 of another class
    ("heping", "/h5/class/计算机2301"),
    ("zhangsan", "/h5/card/2023010102"),  # a student, another's card
    ("zhangsan", "/h5/card/9999999999"),  # a student learns nothing of who exists
    ("zhangsan", "/h5/class/计算机2301"),
    ("zhengyuan", "/h5/card/2023010101"),  # 院领导: aggregates only
    ("qianmin", "/h5/class/计算机2301"),  # 系部主任 of another department
])
def test_out_of_scope_is_403(app, recorded, userid: str, path: str) -> None:
    _client, page = open_as(app, userid, path)
    assert page.status_code == 403
    assert "张三" not in html(page) and "心理" not in html(page)


def test_unknown_student_or_class_is_404_for_staff(app) -> None:
    client, page = open_as(app, "wangfang", "/h5/card/9999999999")
    assert page.status_code == 404
    assert client.get("/h5/class/不存在").status_code == 404


def test_a_subject_teacher_never_sees_a_sensitive_point(app, recorded) -> None:
    _client, page = open_as(app, "chenjing", "/h5/card/2023010101")
    assert page.status_code == 200 and "全勤率" in html(page) and "作业完成率" in html(page)
    assert "心理" not in html(page)
    # The class's 班主任 and 辅导员 do see it, and the open warning.
    for userid in ("wangfang", "liuwei"):
        _client, full = open_as(app, userid, "/h5/card/2023010101")
        assert "心理辅导频次" in html(full) and "心理健康" in html(full)


def test_a_student_sees_their_sensitive_points_but_no_warnings_list(app, recorded) -> None:
    _client, page = open_as(app, "zhangsan", "/h5/card")
    assert "心理辅导频次" in html(page)
    assert "未处理的预警" not in html(page) and "情绪低落" not in html(page)


# ── the same numbers as chat ─────────────────────────────────────────────────


def shown_total(text: str) -> str:
    found = re.search(r'<span class="label">总分</span><strong>([^<]+)</strong>', text)
    assert found, "no total on the page"
    return found.group(1)


def test_the_card_page_total_is_the_chat_card_total(app, recorded) -> None:
    chat = say(recorded, "zhangsan", "储值卡")
    total = re.search(r"总分 (\S+)", chat).group(1)
    _client, page = open_as(app, "zhangsan", "/h5/card")
    assert shown_total(html(page)) == total
    staff_chat = say(recorded, "wangfang", "储值卡 2023010102")
    _client, staff_page = open_as(app, "wangfang", "/h5/card/2023010102")
    assert shown_total(html(staff_page)) == re.search(r"总分 (\S+)", staff_chat).group(1)


def test_the_class_page_shows_the_class_card_and_the_spread(app, recorded) -> None:
    chat = say(recorded, "wangfang", "班级卡 计算机2301")
    _client, page = open_as(app, "wangfang", "/h5/class/计算机2301")
    body = html(page)
    assert page.status_code == 200
    found = re.search(r'<span class="label">班级卡总分</span><strong>([^<]+)</strong>', body).group(1)
    assert f"总分 {found}" in chat
    assert "学生总分分布" in body and "数据录入落后的学生" in body


def test_dashboard_for_leaders(app, recorded) -> None:
    for userid, scope in (("zhengyuan", "全院"), ("wujun", "信息工程系")):
        _client, page = open_as(app, userid, "/h5/dashboard")
        assert page.status_code == 200 and f"储值卡周报 · {scope}" in html(page)
        assert "领域平均分" in html(page)
        assert "情绪低落" not in html(page)


# ── what the browser gets ────────────────────────────────────────────────────


SVG = re.compile(r"<svg\b.*?</svg>", re.S)


@pytest.mark.parametrize(("userid", "path", "least"), [
    ("zhangsan", "/h5/card", 3), ("wangfang", "/h5/class/计算机2301", 2), ("zhengyuan", "/h5/dashboard", 1)])
def test_charts_are_well_formed_svg_with_a_text_alternative(app, recorded, userid, path, least) -> None:
    _client, page = open_as(app, userid, path)
    charts = SVG.findall(html(page))
    assert len(charts) >= least
    for svg in charts:
        root = ET.fromstring(svg)
        assert root.tag == "svg"
        title = root.find("title")
        assert title is not None and title.text
        if "chart" in root.get("class", ""):
            assert root.find("desc") is not None and root.get("role") == "img"


@pytest.mark.parametrize(("userid", "path"), [
    ("zhangsan", "/h5/card"), ("wangfang", "/h5/class/计算机2301"), ("zhengyuan", "/h5/dashboard"),
    ("chenjing", "/h5/dashboard")])
def test_everything_comes_from_this_site(app, recorded, userid, path) -> None:
    client, page = open_as(app, userid, path)
    body = html(page)
    assert not re.search(r"https?://", body), "a page names another host"
    assert "<script" not in body
    for asset in re.findall(r'(?:href|src)="([^"]+)"', body):
        if asset.startswith("/h5/static/"):
            got = client.get(asset)
            assert got.status_code == 200 and got.mimetype == "text/css"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_the_cookie_is_only_for_the_pages(app) -> None:
    client, _page = open_as(app, "zhangsan", "/h5/card")
    assert client.get_cookie(COOKIE, path="/h5") is not None
    assert client.get_cookie(COOKIE, path="/") is None


def test_the_dashboard_kept_in_the_process_shows_a_late_recording_at_once(app, recorded, session) -> None:
    """With last week's digest state stored (Monday's job), the dashboard is kept in the process; a
    recording for last week made afterwards (上周, in the grace window) changes it at once, as it
    changes 本周概况."""
    from datetime import timedelta  # noqa: PLC0415

    from models.digest.college import build_college  # noqa: PLC0415
    from models.risk.rules import rule_book  # noqa: PLC0415

    svc = app.extensions["czk"]
    today = svc.today()
    monday = today - timedelta(days=today.weekday())
    cal = svc.directory.get(svc.sessions).calendar
    build_college(session, svc.catalogue, cal, monday, ZoneInfo(svc.settings.timezone),
                  rule_book(svc.settings, svc.catalogue), persist=True)
    session.commit()

    def shown(response) -> str:  # noqa: ANN001
        return re.sub(r"\bc\d+-", "c-", html(response))  # the charts' element ids aside

    client, first = open_as(app, "zhengyuan", "/h5/dashboard")
    assert shown(client.get("/h5/dashboard")) == shown(first)
    overview = say(svc, "zhengyuan", "本周概况")
    assert "已记录" in say(svc, "wangfang", "上周 全勤率 张三 60 李四 70 王五 80")
    later = client.get("/h5/dashboard")
    assert shown(later) != shown(first)
    assert say(svc, "zhengyuan", "本周概况") != overview


# ── the class average and the weeks, as the weekly digest kept them ─────────


def weekly_job(svc, session, monday) -> None:  # noqa: ANN001
    from models.digest.college import build_college  # noqa: PLC0415
    from models.risk.rules import rule_book  # noqa: PLC0415

    cal = svc.directory.get(svc.sessions).calendar
    build_college(session, svc.catalogue, cal, monday, ZoneInfo(svc.settings.timezone),
                  rule_book(svc.settings, svc.catalogue), persist=True)
    session.commit()


def radar_average(body: str) -> list[str]:
    """The 班级平均 column of the card page's table of domains."""
    table = body.split("<h2>领域小计与班级平均</h2>", 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr><th scope="row">[^<]+</th><td>[^<]*</td><td>([^<]*)</td>', table)


def test_the_card_compares_with_the_class_as_of_last_sunday_and_its_own_numbers_stay_live(
        app, recorded, session) -> None:
    from datetime import timedelta  # noqa: PLC0415

    from models.pages import class_figures  # noqa: PLC0415

    svc = app.extensions["czk"]
    today = svc.today()
    monday = today - timedelta(days=today.weekday())
    sunday = monday - timedelta(days=1)
    assert "已记录" in say(svc, "wangfang", "上周 全勤率 张三 60 李四 70 王五 80")
    _client, live_page = open_as(app, "wangfang", "/h5/card/2023010102")
    assert "班级平均截至" not in html(live_page)  # nothing kept yet: computed now
    weekly_job(svc, session, monday)

    _client, page = open_as(app, "wangfang", "/h5/card/2023010102")
    body = html(page)
    assert f"班级平均截至{sunday.month}月{sunday.day}日" in body
    class_id = session.scalar(select(SchoolClass.id).where(SchoolClass.code == "计算机2301"))
    cal = svc.directory.get(svc.sessions).calendar
    as_of_sunday = class_figures(session, svc.catalogue, cal, class_id, sunday)
    shown = radar_average(body)
    expected = [f"{v:.1f}" if v is not None else "—" for v in as_of_sunday.averages.values()]
    assert shown == expected
    # A recording today: the student's own numbers change at once, the class's as of Sunday do not.
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 99")
    _client, after = open_as(app, "wangfang", "/h5/card/2023010102")
    chat = say(svc, "wangfang", "储值卡 2023010102")
    assert shown_total(html(after)) == re.search(r"总分 (\S+)", chat).group(1)
    assert radar_average(html(after)) == shown


def chart_points(body: str) -> int:
    return int(re.search(r"横轴为各周周末，共(\d+)个点", body).group(1))


def test_the_dashboard_chart_has_a_point_per_kept_week(app, recorded, session) -> None:
    from datetime import timedelta  # noqa: PLC0415

    svc = app.extensions["czk"]
    today = svc.today()
    monday = today - timedelta(days=today.weekday())
    _client, first = open_as(app, "zhengyuan", "/h5/dashboard")
    assert chart_points(html(first)) == 2  # the digest's own two weeks, nothing kept
    assert "图中只有每周周报保存过的2周" in html(first)
    for weeks_ago in (3, 2, 1, 0):  # the job ran on each of the last four Mondays
        weekly_job(svc, session, monday - timedelta(weeks=weeks_ago))
    for userid in ("zhengyuan", "wujun"):  # the college, a department
        _client, page = open_as(app, userid, "/h5/dashboard")
        assert chart_points(html(page)) == 5, userid
    weekly_job(svc, session, monday)  # a rerun: nothing new
    _client, page = open_as(app, "zhengyuan", "/h5/dashboard")
    assert chart_points(html(page)) == 5


def test_a_started_worker_has_the_roster_and_the_page_templates_loaded(svc) -> None:
    """bot.warm_up (gunicorn's post_worker_init, `serve`): the first page view pays neither."""
    from bot import PAGE_TEMPLATES, warm_up

    app = create_app(service=svc)
    assert svc.directory._current is None
    warm_up(app)
    assert svc.directory._current is not None and "2023010101" in svc.directory._current.students_by_no
    compiled = {key[1] for key in app.jinja_env.cache.keys()}  # (loader, name) → template
    assert set(PAGE_TEMPLATES) <= compiled


def test_a_worker_starts_even_when_the_database_does_not_answer(tmp_path) -> None:
    from bot import warm_up

    settings = load_settings({"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none", "redis_url": None,
                              "secret_key": "test"})
    app = create_app(service=runtime.make_service(settings))
    warm_up(app)  # logs a warning, raises nothing
    assert app.extensions["czk"].directory._current is None
