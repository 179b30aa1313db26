"""The console channel: the same conversation in a terminal, scriptable from stdin."""

from __future__ import annotations

import itertools
import logging
import sys
import uuid
from typing import TextIO

from bot.pipeline import handle_message
from core.messages import IncomingMessage
from core.render import render
from models.service import Service
from scheduler.delivery import show_pushes

PROMPT = "> "


def _who(service: Service) -> str:
    from models.io.demo_people import demo_people

    with service.sessions() as session:
        people = demo_people(session)
    if not people:
        return render("cli/console_no_people.txt")
    return "\n".join(f"{uid:<14} {name} · {desc}" for uid, name, desc in people)


def run_console(service: Service, userid: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Read messages (a line each; end a line with \\ to continue it) and print the replies."""
    interactive = stdin.isatty()
    if interactive:  # a person at a terminal reads the replies, not the per-message log lines (stderr)
        logging.getLogger("bot.pipeline").setLevel(logging.WARNING)
    service.evaluator.background = False  # one person at a terminal: the risk check right after each reply
    session_id = uuid.uuid4().hex[:8]
    counter = itertools.count(1)
    if interactive:
        print(render("cli/console_banner.txt", userid=userid), file=stdout)
    buffer: list[str] = []
    while True:
        if interactive:
            print(PROMPT if not buffer else "… ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.endswith("\\"):
            buffer.append(line[:-1])
            continue
        text = "\n".join([*buffer, line])
        buffer = []
        stripped = text.strip()
        if not stripped:
            continue
        if stripped in ("/quit", "/exit"):
            break
        if stripped == "/who":
            print(_who(service), file=stdout)
            continue
        if stripped.startswith("/as"):
            new = stripped[3:].strip()
            if new:
                userid = new
                print(render("cli/console_switched.txt", userid=userid), file=stdout)
            else:
                print(render("cli/console_as_usage.txt"), file=stdout)
            continue
        msg = IncomingMessage("console", userid, text, msg_key=f"{session_id}-{next(counter)}")
        reply = handle_message(service, msg)
        if reply.text:
            print(reply.text, file=stdout)
        show_pushes(service, userid, stdout)  # what was pushed to this person meanwhile, marked 【推送】
        if not interactive:
            print(file=stdout)
        stdout.flush()
    return 0
