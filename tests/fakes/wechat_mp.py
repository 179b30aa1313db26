"""WeChat's side of the Official Account callback: requests signed and encrypted as WeChat signs and
encrypts them (wechatpy's WeChatCrypto plays WeChat), and the passive replies opened and checked."""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid

import requests
import xmltodict
from wechatpy.crypto import PrpCrypto, WeChatCrypto

APP_ID = "wx5c1e0b9d7a3f2468"
ACCOUNT = "gh_3c8a2f9e7b10"  # the account's original id: the ToUserName of what followers send
TOKEN = "czkMpToken2025"
AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
OPENID = "oTq8Z5mJc2bXkLr0Wd4Hn7Ys9FaE"

_msg_ids = itertools.count(int(time.time() * 1000) * 1000)


def new_msg_id() -> str:
    """A fresh MsgId (WeChat's are 64-bit integers)."""
    return str(next(_msg_ids))


def signature(token: str, *parts: str) -> str:
    return hashlib.sha1("".join(sorted([token, *parts])).encode()).hexdigest()


def fields_xml(fields: dict[str, str | int]) -> str:
    inner = "".join(f"<{k}>{v}</{k}>" if isinstance(v, int) else f"<{k}><![CDATA[{v}]]></{k}>"
                    for k, v in fields.items())
    return f"<xml>{inner}</xml>"


def text_msg(content: str, sender: str = OPENID, msg_id: str | None = None) -> dict[str, str | int]:
    return {"ToUserName": ACCOUNT, "FromUserName": sender, "CreateTime": int(time.time()), "MsgType": "text",
            "Content": content, "MsgId": int(msg_id or new_msg_id())}


def image_msg(sender: str = OPENID) -> dict[str, str | int]:
    return {"ToUserName": ACCOUNT, "FromUserName": sender, "CreateTime": int(time.time()), "MsgType": "image",
            "PicUrl": "http://127.0.0.1/p.jpg", "MediaId": "media1", "MsgId": int(new_msg_id())}


def event_msg(event: str, key: str = "", sender: str = OPENID, create_time: int | None = None) -> dict[str, str | int]:
    return {"ToUserName": ACCOUNT, "FromUserName": sender, "CreateTime": create_time or int(time.time()),
            "MsgType": "event", "Event": event, "EventKey": key}


class MpSender:
    """Posts callbacks to /wechat/mp as WeChat does in each mode, and opens the passive replies."""

    def __init__(self, base_url: str, token: str = TOKEN, aes_key: str | None = AES_KEY, app_id: str = APP_ID) -> None:
        self.url = base_url + "/wechat/mp"
        self.token, self.app_id = token, app_id
        self.crypto = WeChatCrypto(token, aes_key, app_id) if aes_key else None

    def stamp(self) -> tuple[str, str]:
        return str(int(time.time())), uuid.uuid4().hex[:10]

    def plain_request(self, fields: dict[str, str | int], forged: bool = False) -> tuple[dict[str, str], bytes]:
        timestamp, nonce = self.stamp()
        sig = signature("not-the-token" if forged else self.token, timestamp, nonce)
        params = {"signature": sig, "timestamp": timestamp, "nonce": nonce, "openid": str(fields["FromUserName"])}
        return params, fields_xml(fields).encode()

    def aes_request(self, fields: dict[str, str | int], compatible: bool = False, forged: bool = False,
                    inner: str | None = None) -> tuple[dict[str, str], bytes]:
        """Safe mode (the body holds ToUserName and Encrypt) or compatible mode (the plain fields too)."""
        assert self.crypto is not None
        timestamp, nonce = self.stamp()
        encrypt = PrpCrypto(self.crypto.key).encrypt(inner or fields_xml(fields), self.app_id).decode()
        token = "not-the-token" if forged else self.token
        params = {"signature": signature(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
                  "openid": str(fields.get("FromUserName", "")), "encrypt_type": "aes",
                  "msg_signature": signature(token, timestamp, nonce, encrypt)}
        outer = dict(fields) if compatible else {"ToUserName": fields.get("ToUserName", ACCOUNT)}
        body = fields_xml(outer)[:-len("</xml>")] + f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        return params, body.encode()

    def post(self, params: dict[str, str], body: bytes) -> requests.Response:
        return requests.post(self.url, params=params, data=body, timeout=10, headers={"Content-Type": "text/xml"})

    def plain(self, fields: dict[str, str | int], forged: bool = False) -> requests.Response:
        return self.post(*self.plain_request(fields, forged))

    def safe(self, fields: dict[str, str | int], compatible: bool = False, forged: bool = False) -> requests.Response:
        return self.post(*self.aes_request(fields, compatible, forged))

    def reply(self, resp: requests.Response, encrypted: bool) -> dict[str, str] | None:
        """The passive reply's fields (decrypted, its signature checked, when `encrypted`); None if empty."""
        assert resp.status_code == 200, (resp.status_code, resp.text)
        if not resp.content:
            return None
        assert resp.headers["Content-Type"].startswith("application/xml")
        outer = xmltodict.parse(resp.text)["xml"]
        if not encrypted:
            assert "Encrypt" not in outer
            return outer
        assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}, outer
        assert self.crypto is not None
        inner = self.crypto.decrypt_message(resp.text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
        return xmltodict.parse(inner)["xml"]

    def reply_text(self, resp: requests.Response, encrypted: bool = False) -> str:
        fields = self.reply(resp, encrypted)
        return "" if fields is None else fields["Content"]
