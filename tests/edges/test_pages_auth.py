"""Signing in to the pages through WeChat's web authorisation (PRODUCT.md §4.2, items 2 and 3): the
redirect to WeChat's authorize page, the state bound to the browser, the code exchanged once against
the local fakes of WeCom (`auth/getuserinfo`) and of the Official Account (`sns/oauth2/access_token`)
over HTTP, and where a page opened without a session sends the browser."""

from __future__ import annotations

import re
from datetime import datetime
from datetime import time as clock_time
from urllib.parse import parse_qs, quote, urlsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot import create_app
from bot import service as runtime
from bot.pages.auth import COOKIE, OAUTH_COOKIE
from core.config import load_settings
from models.schema import FollowerBinding, Student
from tests.fakes.chat import say
from tests.fakes.fake_mp import FakeMp
from tests.fakes.fake_wecom import FakeWeCom

BASE = "https://czk.example.edu.cn"
AUTHORIZE = "https://open.weixin.qq.com/connect/oauth2/authorize"
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN")
WECOM_UA = WECHAT_UA.replace("MicroMessenger/8.0.47(0x18002f2c)", "wxwork/4.1.20 MicroMessenger/7.0.1")


@pytest.fixture
def wecom():
    with FakeWeCom() as server:
        yield server


@pytest.fixture
def mp():
    with FakeMp() as server:
        yield server


def make_app(db_url: str, redis_url: str | None, today, wecom: FakeWeCom | None = None,
             mp: FakeMp | None = None):
    overrides: dict = {"database_url": db_url, "redis_url": redis_url, "secret_key": "test",
                       "public_base_url": BASE, "roster_cache_seconds": 0.0}
    if wecom is not None:
        overrides |= {"wecom_api_base": wecom.base_url, "wecom_corp_id": wecom.corp_id,
                      "wecom_secret": wecom.secret, "wecom_agent_id": str(wecom.agent_id)}
    if mp is not None:
        overrides |= {"mp_api_base": mp.base_url, "mp_app_id": mp.app_id, "mp_app_secret": mp.secret}
    settings = load_settings(overrides)
    tz = ZoneInfo(settings.timezone)
    svc = runtime.make_service(settings, clock=lambda: datetime.combine(today, clock_time(10, 0), tz))
    return create_app(service=svc)


@pytest.fixture
def wecom_app(college, db_url, redis_url, today, wecom):
    return make_app(db_url, redis_url, today, wecom=wecom)


@pytest.fixture
def mp_app(college, db_url, redis_url, today, mp):
    return make_app(db_url, redis_url, today, mp=mp)


def html(response) -> str:
    return response.get_data(as_text=True)


def start(client, channel: str, next_path: str | None = "/h5/card", **headers):
    """Open `/h5/auth/<channel>?next=…`; (the response, the state WeChat is asked to send back)."""
    query = "" if next_path is None else f"?next={quote(next_path, safe='')}"
    response = client.get(f"/h5/auth/{channel}{query}", headers=headers)
    found = re.search(r"[?&]state=([^&#]+)", response.headers.get("Location", ""))
    return response, found.group(1) if found else None


def sign_in_route(response) -> tuple[str, str]:
    """Where a page without a session sent the browser: (the sign-in path, the `next` it carries)."""
    assert response.status_code == 302
    parts = urlsplit(response.headers["Location"])
    assert not parts.scheme and not parts.netloc
    [next_path] = parse_qs(parts.query)["next"]
    return parts.path, next_path


def signed_in(client) -> bool:
    return client.get_cookie(COOKIE, path="/h5") is not None


# ── WeCom ────────────────────────────────────────────────────────────────────


def test_wecom_round_trip(wecom_app, wecom) -> None:
    client = wecom_app.test_client()
    response, state = start(client, "wecom", "/h5/card/2023010101")
    assert response.status_code == 302
    back = quote(f"{BASE}/h5/auth/wecom/callback", safe="")
    assert response.headers["Location"] == (
        f"{AUTHORIZE}?appid={wecom.corp_id}&redirect_uri={back}&response_type=code&scope=snsapi_base"
        f"&state={state}&agentid={wecom.agent_id}#wechat_redirect")
    assert re.fullmatch(r"[0-9a-f]{32}", state)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{OAUTH_COOKIE}=") and "HttpOnly" in cookie and "Path=/h5/auth" in cookie
    assert "Secure" in cookie and "SameSite=Lax" in cookie
    assert not signed_in(client)

    code = wecom.issue_code("wangfang")
    back_from_wechat = client.get(f"/h5/auth/wecom/callback?code={code}&state={state}")
    assert back_from_wechat.status_code == 302
    assert back_from_wechat.headers["Location"] == "/h5/card/2023010101"
    assert signed_in(client) and client.get_cookie(OAUTH_COOKIE, path="/h5/auth") is None
    page = client.get("/h5/card/2023010101")
    assert page.status_code == 200 and "张三的储值卡" in html(page)
    [call] = [c for c in wecom.calls if c.path == "auth/getuserinfo"]
    assert call.method == "GET" and call.params["code"] == code and call.params["access_token"]


def test_a_code_works_once(wecom_app, wecom) -> None:
    code = wecom.issue_code("wangfang")
    first = wecom_app.test_client()
    _r, state = start(first, "wecom")
    assert first.get(f"/h5/auth/wecom/callback?code={code}&state={state}").status_code == 302
    again = wecom_app.test_client()  # the same code replayed, even with a good state of its own
    _r, state = start(again, "wecom")
    refused = again.get(f"/h5/auth/wecom/callback?code={code}&state={state}")
    assert refused.status_code == 403 and "没有登录任何人" in html(refused)
    assert not any(h.startswith(f"{COOKIE}=") for h in refused.headers.getlist("Set-Cookie"))
    assert not signed_in(again)
    assert again.get("/h5/card").status_code == 302  # still no session: off to sign in again


def test_an_expired_or_made_up_code_is_403(wecom_app, wecom) -> None:
    for code in (wecom.issue_code("wangfang", age=400), "not-a-code-wecom-gave"):
        client = wecom_app.test_client()
        _r, state = start(client, "wecom")
        response = client.get(f"/h5/auth/wecom/callback?code={code}&state={state}")
        assert response.status_code == 403 and not signed_in(client)


def test_a_wrong_or_missing_state_is_400_and_wechat_is_not_asked(wecom_app, wecom) -> None:
    code = wecom.issue_code("wangfang")
    client = wecom_app.test_client()
    _r, state = start(client, "wecom")
    for query in (f"code={code}&state={'0' * 32}", f"code={code}", f"code={code}&state={state[:-1]}"):
        response = client.get(f"/h5/auth/wecom/callback?{query}")
        assert response.status_code == 400 and "没有登录任何人" in html(response)
        assert not signed_in(client)
    # A state is good for one callback: the right one after a wrong one no longer is.
    assert client.get(f"/h5/auth/wecom/callback?code={code}&state={state}").status_code == 400
    # Another browser (no state cookie), even with a state WeChat really sent back.
    other = wecom_app.test_client()
    _r, state = start(wecom_app.test_client(), "wecom")
    assert other.get(f"/h5/auth/wecom/callback?code={code}&state={state}").status_code == 400
    assert wecom.calls_to("auth/getuserinfo") == 0  # the code was never spent
    client = wecom_app.test_client()  # and it still works where it belongs
    _r, state = start(client, "wecom")
    assert client.get(f"/h5/auth/wecom/callback?code={code}&state={state}").status_code == 302


def test_a_state_from_the_other_channel_is_refused(college, db_url, redis_url, today, wecom, mp) -> None:
    app = make_app(db_url, redis_url, today, wecom=wecom, mp=mp)
    client = app.test_client()
    _r, state = start(client, "wecom")
    response = client.get(f"/h5/auth/mp/callback?code={mp.issue_code('oPARENT')}&state={state}")
    assert response.status_code == 400 and not signed_in(client)


@pytest.mark.parametrize("target", [
    "https://evil.example/h5/card", "//evil.example/h5/card", "/\\evil.example/h5/card", "http:/h5/card",
    "/h5/../export/abc", "/export/abc", "/h5/auth/wecom", "/h5/card\r\nSet-Cookie: x=1", "h5/card"])
def test_next_must_be_a_page_of_this_site(wecom_app, target: str) -> None:
    client = wecom_app.test_client()
    response, state = start(client, "wecom", target)
    assert response.status_code == 400 and state is None
    assert "Location" not in response.headers and OAUTH_COOKIE not in response.headers.get("Set-Cookie", "")


def test_without_next_the_own_card(wecom_app, wecom) -> None:
    client = wecom_app.test_client()
    _r, state = start(client, "wecom", None)
    done = client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('zhangsan')}&state={state}")
    assert done.headers["Location"] == "/h5/card"
    assert "张三的储值卡" in html(client.get("/h5/card"))


def test_someone_outside_the_corp_or_the_roster_is_403(wecom_app, wecom) -> None:
    client = wecom_app.test_client()
    _r, state = start(client, "wecom")
    guest = client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code(openid='o-guest')}&state={state}")
    assert guest.status_code == 403 and "不是本校企业微信的成员" in html(guest) and not signed_in(client)
    _r, state = start(client, "wecom")
    stranger = client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('left-last-year')}&state={state}")
    assert stranger.status_code == 403 and "名册里找不到你" in html(stranger) and not signed_in(client)


def test_wecom_not_answering_is_503_and_signs_no_one_in(wecom_app, wecom) -> None:
    client = wecom_app.test_client()
    _r, state = start(client, "wecom")
    wecom.fail_next(1, http_status=502, path="auth/getuserinfo")
    response = client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('wangfang')}&state={state}")
    assert response.status_code == 503 and "过一会儿" in html(response)
    assert not signed_in(client)


def test_a_refused_token_is_refreshed_once(wecom_app, wecom) -> None:
    client = wecom_app.test_client()
    _r, state = start(client, "wecom")
    assert client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('wangfang')}&state={state}").status_code == 302
    wecom.revoke_tokens()
    client = wecom_app.test_client()
    _r, state = start(client, "wecom")
    assert client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('liuwei')}&state={state}").status_code == 302
    assert wecom.calls_to("gettoken") == 2


# ── the Official Account ─────────────────────────────────────────────────────


@pytest.fixture
def bound(session, college):
    zhang = session.scalar(select(Student.id).where(Student.student_no == "2023010101"))
    session.add(FollowerBinding(openid="oPARENT", student_id=zhang, kind="parent"))
    session.commit()


def test_official_account_round_trip_for_a_bound_parent(mp_app, mp, bound) -> None:
    svc = mp_app.extensions["czk"]
    assert "已记录" in say(svc, "liuwei", "心理辅导 张三 2")
    assert "已记录" in say(svc, "wangfang", "全勤率 张三 95")
    client = mp_app.test_client()
    response, state = start(client, "mp")
    back = quote(f"{BASE}/h5/auth/mp/callback", safe="")
    assert response.headers["Location"] == (
        f"{AUTHORIZE}?appid={mp.app_id}&redirect_uri={back}&response_type=code&scope=snsapi_base"
        f"&state={state}#wechat_redirect")
    done = client.get(f"/h5/auth/mp/callback?code={mp.issue_code('oPARENT')}&state={state}")
    assert done.status_code == 302 and done.headers["Location"] == "/h5/card"
    page = client.get("/h5/card")
    assert page.status_code == 200 and "张三的储值卡" in html(page) and "全勤率" in html(page)
    assert "心理" not in html(page)
    assert client.get("/h5/card/2023010102").status_code == 403


def test_an_unbound_follower_is_told_how_to_bind(mp_app, mp) -> None:
    client = mp_app.test_client()
    _r, state = start(client, "mp")
    response = client.get(f"/h5/auth/mp/callback?code={mp.issue_code('oSTRANGER')}&state={state}")
    assert response.status_code == 403 and "绑定 学号 验证码" in html(response)
    assert not signed_in(client)


def test_official_account_code_used_twice_is_403(mp_app, mp, bound) -> None:
    code = mp.issue_code("oPARENT")
    client = mp_app.test_client()
    _r, state = start(client, "mp")
    assert client.get(f"/h5/auth/mp/callback?code={code}&state={state}").status_code == 302
    other = mp_app.test_client()
    _r, state = start(other, "mp")
    assert other.get(f"/h5/auth/mp/callback?code={code}&state={state}").status_code == 403
    assert not signed_in(other)


# ── a page opened without a session ──────────────────────────────────────────


def test_no_session_goes_to_wecom_first(college, db_url, redis_url, today, wecom, mp) -> None:
    app = make_app(db_url, redis_url, today, wecom=wecom, mp=mp)
    client = app.test_client()
    response = client.get("/h5/class/计算机2301", headers={"User-Agent": WECOM_UA})
    assert sign_in_route(response) == ("/h5/auth/wecom", "/h5/class/计算机2301")
    # Through WeCom and back to the class page.
    _r, state = start(client, "wecom", "/h5/class/计算机2301")
    done = client.get(f"/h5/auth/wecom/callback?code={wecom.issue_code('wangfang')}&state={state}")
    page = client.get(done.headers["Location"])
    assert page.status_code == 200 and "计算机2301 · 班级卡" in html(page)
    # WeChat's own browser cannot pass WeCom's OAuth: the Official Account's instead.
    fresh = app.test_client().get("/h5/card", headers={"User-Agent": WECHAT_UA})
    assert sign_in_route(fresh) == ("/h5/auth/mp", "/h5/card")
    assert sign_in_route(app.test_client().get("/h5/card")) == ("/h5/auth/wecom", "/h5/card")


def test_no_session_with_only_the_official_account(mp_app) -> None:
    response = mp_app.test_client().get("/h5/dashboard?week=1")
    assert sign_in_route(response) == ("/h5/auth/mp", "/h5/dashboard?week=1")


def test_no_session_and_no_channel_says_how_to_open(college, db_url, redis_url, today) -> None:
    app = make_app(db_url, redis_url, today)
    response = app.test_client().get("/h5/card")
    assert response.status_code == 401 and "从消息里的链接打开" in html(response)
    assert app.test_client().get("/h5/auth/wecom?next=/h5/card").status_code == 404
    assert app.test_client().get("/h5/auth/mp/callback?code=x&state=y").status_code == 404


def test_an_unconfigured_channel_has_no_sign_in(wecom_app) -> None:
    assert wecom_app.test_client().get("/h5/auth/mp?next=/h5/card").status_code == 404
