"""The pages in a real browser: the product started as a user starts it (`python -m bot db upgrade`,
`python -m bot demo`, `python -m bot serve` on SQLite in a temp dir, as processes), then Debian's
headless chromium at a phone's 375 × 812, driven by playwright, opening the links a message carries
(page_link's `?t=` token). Each page renders its SVG charts with no script or console error and no
request to another host; 张三's card shows the radar, the weekly trend and the chat's total; a
任课教师's view of a student has no 心理 in it; the dashboard opens for a 院领导 and is 403 for a 班主任.
Screenshots go to the test's tmp_path.

Without chromium (or playwright) the tests skip saying so; with CI set in the environment they fail.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from core.config import load_settings
from models.page_links import page_link
from tests.fakes.processes import free_port
from tests.outside.conftest import ProcessEnv, bot, bot_env, ok, web_process

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
PHONE = {"width": 375, "height": 812}
SECRET = "browser-test"


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium fonts-noto-cjk)"
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        return "playwright is not installed (pip install -r requirements.txt)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium, headless; skipped without it, a failure under CI."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the browser tests cannot run: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@dataclass
class Site:
    """The demo college served by `python -m bot serve`."""

    base: str
    env: ProcessEnv
    shots: Path

    def link(self, userid: str, path: str) -> str:
        """The link a message to `userid` carries (WeCom)."""
        settings = load_settings({"secret_key": SECRET, "public_base_url": self.base})
        return page_link(settings, "wecom", userid, path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("browser")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = bot_env(f"sqlite:///{home / 'demo.db'}", SECRET_KEY=SECRET, PUBLIC_BASE_URL=base)
    env.pop("REDIS_URL", None)
    ok(bot(env, "db", "upgrade"))
    ok(bot(env, "demo"))
    argv = [sys.executable, "-m", "bot", "serve", "--port", str(port)]
    with web_process(argv, env, port, home / "serve.log") as server:
        yield Site(server.base, env, home)


@dataclass
class Visit:
    """One page opened in a fresh browser context: what it showed and what happened on the way."""

    status: int
    html: str
    text: str
    charts: list[dict]  # each svg.chart: its title and rendered size
    errors: list[str] = field(default_factory=list)  # console errors, page errors, failed requests
    hosts: set[str] = field(default_factory=set)  # every host a request went to


def visit(browser, site: Site, userid: str, path: str, shot: Path | None = None,  # noqa: ANN001
          url: str | None = None) -> Visit:
    """Open `path` from a link signed for `userid` (or `url`, a link a message carried) at 375 × 812,
    as WeChat's browser would."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    hosts: set[str] = set()
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
    page.on("response", lambda r: errors.append(f"{r.status}: {r.url}")
            if r.status >= 400 and r.request.resource_type != "document" else None)
    try:
        response = page.goto(url or site.link(userid, path), wait_until="load")
        assert response is not None
        charts = []
        for svg in page.locator("svg.chart").all():
            box = svg.bounding_box()
            charts.append({"title": svg.locator("title").first.text_content(),
                           "width": box["width"] if box else 0, "height": box["height"] if box else 0})
        if shot is not None:
            page.screenshot(path=str(shot), full_page=True)
        return Visit(response.status, page.content(), page.inner_text("body"), charts, errors, hosts)
    finally:
        context.close()


def drawn(v: Visit, least: int) -> None:
    """At least `least` charts, each drawn with a real size inside the phone's width; nothing went wrong."""
    assert v.status == 200, v.text
    assert len(v.charts) >= least, v.charts
    for chart in v.charts:
        assert 200 <= chart["width"] <= PHONE["width"] and chart["height"] > 40, chart
    assert v.errors == []


def only_this_site(v: Visit, site: Site) -> None:
    assert v.hosts == {urlsplit(site.base).netloc}, v.hosts


def test_zhangsans_card_shows_the_radar_the_trend_and_the_chats_total(browser, site, tmp_path) -> None:
    chat = ok(bot(site.env, "chat", "--as", "zhangsan", stdin="储值卡\n"))
    total = re.search(r"总分 ([0-9.]+)", chat)
    assert total, chat
    link = re.search(r"查看图表：(\S+)", chat)  # the link the chat answer ends with, opened as it is
    assert link and chat.rstrip().endswith(link.group(1)) and link.group(1).startswith(site.base), chat
    v = visit(browser, site, "zhangsan", "/h5/card", tmp_path / "card.png", url=link.group(1))
    assert v.status == 200, v.status
    drawn(v, 2)
    only_this_site(v, site)
    titles = [c["title"] for c in v.charts]
    assert any("雷达图" in t for t in titles) and any("每周总分" in t for t in titles), titles
    radar = next(c for c in v.charts if "雷达图" in c["title"])
    assert radar["height"] >= 200, radar  # three axes with room for their labels
    assert re.search(rf"总分\s*{re.escape(total.group(1))}", v.text), (total.group(1), v.text[:400])
    assert "张三的储值卡" in v.text
    assert (tmp_path / "card.png").stat().st_size > 10_000


def test_a_subject_teacher_sees_no_psychology_at_all(browser, site, tmp_path) -> None:
    # 陈静 teaches Python程序设计 in 计算机2301; 2023010101 is 张三.
    v = visit(browser, site, "chenjing", "/h5/card/2023010101", tmp_path / "teacher.png")
    drawn(v, 1)
    only_this_site(v, site)
    assert "张三" in v.text
    assert "心理" not in v.html


def test_the_class_page_draws_its_charts(browser, site, tmp_path) -> None:
    v = visit(browser, site, "wangfang", "/h5/class/计算机2301", tmp_path / "class.png")
    drawn(v, 2)
    only_this_site(v, site)
    assert "班级卡" in v.text


def test_the_dashboard_opens_for_a_leader_and_not_for_a_class_teacher(browser, site, tmp_path) -> None:
    v = visit(browser, site, "zhengyuan", "/h5/dashboard", tmp_path / "dashboard.png")
    drawn(v, 2)
    only_this_site(v, site)
    assert "储值卡周报 · 全院" in v.text
    # The demo keeps every Sunday of the semester so far: the weeks' chart has them all.
    points = int(re.search(r"横轴为各周周末，共(\d+)个点", v.html).group(1))
    assert points >= 3 and "图中只有" not in v.text
    refused = visit(browser, site, "wangfang", "/h5/dashboard")
    assert refused.status == 403
    assert refused.charts == [] and "周报看板仅供" in refused.text
