"""The pages' figures for bench/college.py, on its college and in its run: the card page's server
time against the chat card's (the same student, the same viewer: the class's 班主任), the dashboard
from the digest's stored state (the first view in a process, then later ones), and the card page's
weight with its assets, gzip-compressed as a proxy sends it.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import math
import random
import re
import statistics
import time
from datetime import date, datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo

from sqlalchemy import text

TARGET_PAGE_P99_MS = 50.0
TARGET_PAGE_RATIO = 3.0
TARGET_DASHBOARD_S = 1.0
TARGET_PAGE_KB = 150.0

Result = tuple[str, str, bool]


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def page_figures(url: str, day: date, samples: int) -> list[Result]:
    """Measure the pages as of `day` 10:00 (a Wednesday: the digest's state is there); print each figure."""
    from bot import create_app, warm_up  # noqa: PLC0415
    from bot import service as runtime  # noqa: PLC0415
    from bot.pipeline import handle_message  # noqa: PLC0415
    from core.config import load_settings  # noqa: PLC0415
    from core.messages import IncomingMessage  # noqa: PLC0415
    from models.page_links import page_link  # noqa: PLC0415

    settings = load_settings({"database_url": url, "redis_url": None, "secret_key": "bench",
                              "public_base_url": "http://bench.invalid"})
    tz = ZoneInfo(settings.timezone)

    def service():  # noqa: ANN202
        return runtime.make_service(settings, clock=lambda: datetime.combine(day, dtime(10, 0), tz))

    svc = service()
    app = create_app(service=svc)
    keys = itertools.count(1)

    def signed_in(userid: str, path: str):  # noqa: ANN202
        client = app.test_client()
        first = client.get(page_link(settings, "console", userid, path).removeprefix(settings.public_base_url))
        assert first.status_code == 302, first.status_code
        return client, first.headers["Location"]

    with svc.sessions() as session:
        pairs = session.execute(text(
            "SELECT s.student_no, t.wecom_userid FROM student s JOIN school_class c ON c.id = s.class_id "
            "JOIN staff t ON t.id = c.head_teacher_id")).all()
        leader = session.scalar(text("SELECT wecom_userid FROM staff WHERE roles LIKE '%院领导%' LIMIT 1"))
        head = session.scalar(text("SELECT wecom_userid FROM staff WHERE roles LIKE '%系部主任%' LIMIT 1"))
    rng = random.Random(7)
    chat_ms, page_ms, total_seen = [], [], 0
    for i in range(samples + 10):
        no, userid = rng.choice(pairs)
        start = time.perf_counter()
        reply = handle_message(svc, IncomingMessage("console", userid, f"储值卡 {no}", msg_key=f"b{next(keys)}"))
        took = (time.perf_counter() - start) * 1000
        client, path = signed_in(userid, f"/h5/card/{no}")
        start = time.perf_counter()
        response = client.get(path)
        page_took = (time.perf_counter() - start) * 1000
        assert response.status_code == 200, response.status_code
        if i >= 10:  # the first few warm the connections and caches
            chat_ms.append(took)
            page_ms.append(page_took)
        total = re.search(r"总分[^0-9—]*([0-9.]+)", reply.text)
        total_seen += bool(total and total.group(1) in response.get_data(as_text=True))
    chat99, page99 = p99(chat_ms), p99(page_ms)
    ratio = page99 / chat99
    print(f"{len(chat_ms)} chat cards (储值卡 <学号> from the class's 班主任, through the pipeline): "
          f"p50 {statistics.median(chat_ms):.1f} ms, p99 {chat99:.1f} ms")
    print(f"{len(page_ms)} card pages (/h5/card/<学号>, the same viewers, server time): "
          f"p50 {statistics.median(page_ms):.1f} ms, p99 {page99:.1f} ms = {ratio:.2f} × the chat card's p99 "
          f"(the chat's total on the page: {total_seen} of {samples + 10})")
    results = [("card page p99 ≤ 50 ms", f"{page99:.1f} ms", page99 <= TARGET_PAGE_P99_MS),
               ("card page p99 ≤ 3 × the chat card's", f"{ratio:.2f} ×", ratio <= TARGET_PAGE_RATIO)]

    # The weight: the biggest card page of the sample, its stylesheet, gzip as a proxy sends them.
    body = response.get_data()
    links = re.findall(rb'<link[^>]* href="(/[^"]+)"|\ssrc="(/[^"]+)"', body)
    assets = {a.decode() for pair in links for a in pair if a}
    files = [body] + [client.get(a).get_data() for a in sorted(assets)]
    kb = sum(len(gzip.compress(f)) for f in files) / 1024
    print(f"card page with its assets ({', '.join(sorted(assets))}; the charts are inline SVG): "
          f"{sum(map(len, files)) / 1024:.1f} KB, gzip {kb:.1f} KB")
    results.append(("card page with assets ≤ 150 KB (gzip)", f"{kb:.1f} KB", kb <= TARGET_PAGE_KB))

    # The dashboard: a fresh process' first view, then later views (the digest kept in the process).
    def views(userid: str, app_, n: int) -> list[float]:
        client = app_.test_client()
        first = client.get(page_link(settings, "console", userid, "/h5/dashboard")
                           .removeprefix(settings.public_base_url))
        out = []
        for _ in range(n):
            start = time.perf_counter()
            got = client.get(first.headers["Location"])
            out.append(time.perf_counter() - start)
            assert got.status_code == 200 and "还在准备中" not in got.get_data(as_text=True)
        return out

    def fresh() -> object:
        """A started worker: the app built and warmed (bot.warm_up: the roster and the page templates,
        as gunicorn.conf.py's post_worker_init does before the worker accepts connections)."""
        app_ = create_app(service=service())
        warm_up(app_)
        return app_

    firsts = []
    for _ in range(3):
        firsts.append(views(leader, fresh(), 1)[0])
        gc.collect()  # one worker's roster and digest at a time: the peak RSS is the college's, not 3 workers'
    later_app = fresh()
    later = views(leader, later_app, 6)[1:] + views(head, later_app, 6)[1:]
    cold, warm = max(firsts), max(later)
    print(f"dashboard from the stored state: first view in a started worker (院领导, three workers) "
          f"{', '.join(f'{t:.3f}' for t in firsts)} s; later views (院领导 and a 系部主任) at most "
          f"{warm * 1000:.0f} ms")
    results.append(("dashboard ≤ 1 s, first view in a started worker", f"{cold:.3f} s", cold <= TARGET_DASHBOARD_S))
    results.append(("dashboard ≤ 1 s, later views", f"{warm:.3f} s", warm <= TARGET_DASHBOARD_S))
    return results
