"""The Official Account API client against a local fake of the API over HTTP: every call under
MP_API_BASE, one shared token (Redis or this process), refresh on 40001/42001, typed errors, timeouts."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import requests

from bot.cli.menu import load_menus
from core.config import ROOT, Settings, load_settings
from tests.fakes.fake_mp import FakeMp
from tests.fakes.fake_wecom import FakeWeCom
from tests.fakes.processes import product_env
from tests.fakes.threads import at_once
from wechat.mp_api import MpAPI, MpAPIError
from wechat.wecom_api import WeComAPI

OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"


def mp_settings(fake: FakeMp, **changes: str | None) -> Settings:
    return load_settings(dict({"database_url": "sqlite://", "redis_url": None, "secret_key": "test",
                               "mp_app_id": fake.app_id, "mp_app_secret": fake.secret,
                               "mp_api_base": fake.base_url}, **changes))


@pytest.fixture
def fake():
    # A fresh app id per test: token caches (Redis or this process) never leak between tests.
    with FakeMp(app_id=f"wx{uuid.uuid4().hex[:16]}", templates={"TPL_WEEKLY"}) as server:
        server.follower_wrote(OPENID)
        yield server


def test_every_call_goes_under_the_configured_root_with_a_timeout(fake, token_store):
    api = MpAPI(mp_settings(fake), token_store)
    assert api.timeout == 5.0
    api.send_template(OPENID, "TPL_WEEKLY", {"first": "张三同学，这是你上周的储值卡：", "remark": "——班主任 王芳"},
                      url="http://localhost:8000/h5/card")
    api.send_text(OPENID, "你好")
    assert [c.path for c in fake.calls] == ["cgi-bin/token", "cgi-bin/message/template/send",
                                            "cgi-bin/message/custom/send"]
    assert fake.calls[0].params == {"grant_type": "client_credential", "appid": fake.app_id, "secret": fake.secret}
    template = fake.calls[1].body
    assert template["template_id"] == "TPL_WEEKLY" and template["url"] == "http://localhost:8000/h5/card"
    assert template["data"]["first"] == {"value": "张三同学，这是你上周的储值卡："}
    assert fake.received[OPENID] == ["张三同学，这是你上周的储值卡：\n——班主任 王芳", "你好"]


def test_the_official_root_is_the_default():
    settings = load_settings({"database_url": "sqlite://", "secret_key": "t", "mp_app_id": "wx1",
                              "mp_app_secret": "s"}, environ={})
    assert MpAPI(settings).base == "https://api.weixin.qq.com/"
    assert MpAPI(load_settings({"database_url": "sqlite://", "secret_key": "t",
                                "mp_api_base": "http://127.0.0.1:9"}, environ={})).base == "http://127.0.0.1:9/"


def test_the_token_is_shared_by_two_clients_and_not_fetched_per_call(fake, token_store):
    first = MpAPI(mp_settings(fake), token_store)
    second = MpAPI(mp_settings(fake), token_store)  # as if another process
    for i in range(3):
        first.send_text(OPENID, f"一{i}")
        second.send_text(OPENID, f"二{i}")
    assert fake.calls_to("cgi-bin/token") == 1
    token = first.access_token()
    assert second.access_token() == token
    # A client whose clock reads almost two hours later sees the shared expiry and refreshes.
    later = MpAPI(mp_settings(fake), token_store, clock=lambda: time.time() + 7000)
    assert later.access_token() != token
    assert fake.calls_to("cgi-bin/token") == 2


def test_concurrent_clients_fetch_the_token_once(fake, token_store):
    clients = [MpAPI(mp_settings(fake), token_store) for _ in range(3)]
    fake.fail_next(1, delay=0.3, path="cgi-bin/token")  # a slow token call widens the race
    tokens = at_once([clients[i % 3].access_token for i in range(9)], timeout=20)
    assert len(tokens) == 9 and len(set(tokens)) == 1
    assert fake.calls_to("cgi-bin/token") == 1


@pytest.mark.parametrize("how", ["expired-42001", "not-latest-40001", "injected-42001", "injected-40001"])
def test_a_refused_token_is_refreshed_once_and_the_message_sent(fake, token_store, how):
    api = MpAPI(mp_settings(fake), token_store)
    api.send_text(OPENID, "一")
    if how == "expired-42001":
        fake.expire_tokens()
    elif how == "not-latest-40001":
        fake.revoke_tokens()
    else:
        fake.fail_next(1, errcode=int(how[-5:]), path="cgi-bin/message/custom/send")
    api.send_text(OPENID, "二")
    assert fake.calls_to("cgi-bin/token") == 2
    assert fake.calls_to("cgi-bin/message/custom/send") == 3
    assert fake.received[OPENID] == ["一", "二"]


def test_a_token_refused_twice_is_raised_not_retried_forever(fake, token_store):
    api = MpAPI(mp_settings(fake), token_store)
    fake.fail_next(5, errcode=40001, path="cgi-bin/message/custom/send")
    with pytest.raises(MpAPIError) as caught:
        api.send_text(OPENID, "一")
    assert caught.value.errcode == 40001 and caught.value.token_error
    assert fake.calls_to("cgi-bin/message/custom/send") == 2 and fake.calls_to("cgi-bin/token") == 2


def test_timeouts_and_errors_are_typed(fake):
    api = MpAPI(mp_settings(fake), None, timeout=0.5)
    api.access_token()
    fake.fail_next(1, delay=1.5, path="cgi-bin/message/custom/send")
    started = time.monotonic()
    with pytest.raises(MpAPIError) as caught:
        api.send_text(OPENID, "慢")
    assert time.monotonic() - started < 1.4
    # Sent, and no answer: WeChat may have delivered it, so it is not worth a blind retry.
    assert caught.value.errcode is None and caught.value.outcome_unknown and not caught.value.retryable

    fake.fail_next(1, http_status=502, path="cgi-bin/message/custom/send")
    with pytest.raises(MpAPIError) as caught:
        api.send_text(OPENID, "一")
    assert caught.value.http_status == 502 and caught.value.retryable and not caught.value.outcome_unknown

    for errcode in (45009, -1):
        fake.fail_next(1, errcode=errcode, path="cgi-bin/message/custom/send")
        with pytest.raises(MpAPIError) as caught:
            api.send_text(OPENID, "一")
        assert caught.value.errcode == errcode and caught.value.retryable

    for errcode in (45047, 43004):
        fake.fail_next(1, errcode=errcode, path="cgi-bin/message/custom/send")
        with pytest.raises(MpAPIError) as caught:
            api.send_text(OPENID, "一")
        assert caught.value.errcode == errcode and not caught.value.retryable


def test_nobody_listening_is_retryable_not_unknown():
    with FakeMp() as gone:
        settings = mp_settings(gone)
    api = MpAPI(settings, None, timeout=0.5)
    with pytest.raises(MpAPIError) as caught:
        api.access_token()
    assert caught.value.errcode is None and caught.value.retryable and not caught.value.outcome_unknown


def test_bad_credentials_are_errcodes(fake):
    with pytest.raises(MpAPIError) as caught:
        MpAPI(mp_settings(fake, mp_app_secret="wrong"), None).access_token()
    assert caught.value.errcode == 40125
    with pytest.raises(MpAPIError) as caught:
        MpAPI(mp_settings(fake, mp_app_id="wxnobody"), None).access_token()
    assert caught.value.errcode == 40013


def test_the_fake_keeps_wechats_rules_for_followers_and_templates(fake):
    api = MpAPI(mp_settings(fake), None)
    with pytest.raises(MpAPIError) as caught:
        api.send_text("o-silent", "一")  # never wrote: outside the 48-hour window
    assert caught.value.errcode == 45015
    fake.follower_wrote("o-old", at=time.time() - 49 * 3600)
    with pytest.raises(MpAPIError) as caught:
        api.send_text("o-old", "一")
    assert caught.value.errcode == 45015
    with pytest.raises(MpAPIError) as caught:
        api.send_template(OPENID, "TPL_UNKNOWN", {"first": "一"})
    assert caught.value.errcode == 40037
    fake.unfollow(OPENID)
    for send in (lambda: api.send_text(OPENID, "一"), lambda: api.send_template(OPENID, "TPL_WEEKLY", {"first": "一"})):
        with pytest.raises(MpAPIError) as caught:
            send()
        assert caught.value.errcode == 43004
    assert fake.received == {}


def test_oauth_codes_give_the_openid_once(fake):
    api = MpAPI(mp_settings(fake), None)
    code = fake.issue_code(OPENID)
    assert api.oauth_openid(code) == OPENID
    call = [c for c in fake.calls if c.path == "sns/oauth2/access_token"][0]
    assert call.params == {"appid": fake.app_id, "secret": fake.secret, "code": code,
                           "grant_type": "authorization_code"}
    with pytest.raises(MpAPIError) as caught:
        api.oauth_openid(code)
    assert caught.value.errcode == 40163
    with pytest.raises(MpAPIError) as caught:
        api.oauth_openid("forged")
    assert caught.value.errcode == 40029
    assert fake.calls_to("cgi-bin/token") == 0  # the web-authorisation exchange needs no access token


def test_menus_are_checked_as_wechat_checks_them(fake):
    api = MpAPI(mp_settings(fake), None)
    click = {"type": "click", "name": "储值卡", "key": "储值卡"}
    refused = {
        40016: {"button": [click] * 4},
        40018: {"button": [dict(click, name="我的成长储值卡")]},  # 21 bytes: over 16
        40023: {"button": [{"name": "更多", "sub_button": [click] * 6}]},
        40025: {"button": [{"name": "更多", "sub_button": [dict(click, name="长" * 21)]}]},  # 63 bytes
        40017: {"button": [dict(click, type="nonsense")]},
        40019: {"button": [dict(click, key="")]},
    }
    for errcode, menu in refused.items():
        with pytest.raises(MpAPIError) as caught:
            api.create_menu(menu)
        assert caught.value.errcode == errcode, menu
    assert fake.menu is None
    api.create_menu({"button": [click, {"name": "更多", "sub_button": [dict(click, name="长" * 20)]}]})
    assert fake.menu["button"][0]["name"] == "储值卡"


def test_wecom_and_the_official_account_keep_separate_tokens(fake, token_store):
    with FakeWeCom(corp_id=f"ww{uuid.uuid4().hex[:16]}") as wecom:
        both = load_settings({"database_url": "sqlite://", "secret_key": "t", "wecom_corp_id": wecom.corp_id,
                              "wecom_secret": wecom.secret, "wecom_agent_id": str(wecom.agent_id),
                              "wecom_api_base": wecom.base_url, "mp_app_id": fake.app_id,
                              "mp_app_secret": fake.secret, "mp_api_base": fake.base_url})
        mp, wc = MpAPI(both, token_store), WeComAPI(both, token_store)
        assert mp.access_token() != wc.access_token()
        assert mp.token.key.startswith("czk:mp:token:") and wc.token.key.startswith("czk:wecom:token:")
        assert fake.calls_to("cgi-bin/token") == 1 and wecom.calls_to("gettoken") == 1


def test_unknown_path_is_404(fake):
    assert requests.get(fake.base_url + "cgi-bin/nothing", timeout=5).status_code == 404


# ── `python -m bot menu sync`, as a process ──────────────────────────────────

def menu_sync(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = product_env(DATABASE_URL=f"sqlite:///{tmp_path / 'menu.db'}", SECRET_KEY="test", **env)
    return subprocess.run([sys.executable, "-m", "bot", "menu", "sync"], capture_output=True, text=True,
                          cwd=ROOT, env=environ, timeout=120)


def wecom_env(wecom: FakeWeCom) -> dict[str, str]:
    return {"WECOM_CORP_ID": wecom.corp_id, "WECOM_SECRET": wecom.secret, "WECOM_AGENT_ID": str(wecom.agent_id),
            "WECOM_API_BASE": wecom.base_url}


def test_menu_sync_creates_both_menus_from_the_one_definition(fake, tmp_path):
    menus = load_menus()
    with FakeWeCom() as wecom:
        done = menu_sync(tmp_path, **wecom_env(wecom), MP_APP_ID=fake.app_id, MP_APP_SECRET=fake.secret,
                         MP_API_BASE=fake.base_url)
        assert done.returncode == 0, done.stderr
        assert wecom.menu == menus["wecom"] and fake.menu == menus["mp"]
        assert [c.params.get("agentid") for c in wecom.calls if c.path == "menu/create"] == [str(wecom.agent_id)]
    lines = done.stdout.splitlines()
    assert lines == ["企业微信应用菜单已更新：我的储值卡 · 任务预警 · 帮助",
                     "公众号菜单已更新：我的储值卡 · 绑定说明 · 帮助"]
    keys = [b.get("key") for m in menus.values() for top in m["button"] for b in [top, *top.get("sub_button", [])]]
    assert {"储值卡", "任务", "预警", "帮助", "绑定"} <= set(keys)  # each click key is a chat command


def test_menu_sync_skips_a_channel_not_configured_and_fails_on_a_refusal(fake, tmp_path):
    skipped = menu_sync(tmp_path, MP_APP_ID=fake.app_id, MP_APP_SECRET=fake.secret, MP_API_BASE=fake.base_url)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.splitlines()[0].startswith("企业微信应用未配置")
    assert fake.menu is not None

    with FakeWeCom() as wecom:
        wecom.fail_next(1, errcode=40018, path="menu/create")
        refused = menu_sync(tmp_path, **wecom_env(wecom), MP_APP_ID=fake.app_id, MP_APP_SECRET="wrong",
                            MP_API_BASE=fake.base_url)
    assert refused.returncode == 1
    assert "企业微信应用菜单更新失败：错误码 40018" in refused.stderr
    assert "公众号菜单更新失败：错误码 40125" in refused.stderr
    assert "Traceback" not in refused.stderr
