"""One recipient's digest as values: the college's data (models/digest/college.py) sliced to the
college or one department, aggregates only, in the shape templates/digest/weekly.md and weekly.txt
show. The domain writes no sentence: handlers/digest.py and scheduler/notify/digest.py render it.

What it reports: data entry (the share made, by department and class, the recorders behind);
domain averages (the mean over students of each domain subtotal of the card, and its change
against the Sunday before; the same for the total); the classes gaining and losing most (the mean
over the class's students of the card's value added); warnings by category (new in the week, open
at its end, the share acted on within 72 h of those opened in the 7 days ending 72 h before the
week's end, open longer than 72 h, the median hours to first action of the actions taken in the
week; sensitive categories as counts only) and the rules with most false alarms over the last four
weeks; plan tasks overdue by unit.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from statistics import median

from models.catalogue import DOMAINS
from models.digest.college import FALSE_ALARM_DAYS, HANDLE_HOURS, Averages, ClassFigures, CollegeData

# How much of each list a message shows.
SHOW_CLASSES = 5  # lowest data-entry classes
SHOW_RECORDERS = 5  # recorders behind
SHOW_MOVERS = 3  # classes gaining / losing most
SHOW_RULES = 3  # rules with most false alarms
SHOW_UNITS = 6  # units with overdue tasks
SECTIONS = ("entry", "domains", "movers", "warnings", "tasks")


def _pct(recorded: int, expected: int) -> str:
    return f"{100.0 * recorded / expected:.0f}%" if expected else "—"


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _change(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else round(now - before, 1)


def digest_context(data: CollegeData, department_id: int | None) -> dict:
    """What the templates show for the college (None) or one department: aggregates only."""
    week = data.week
    mine = [c for c in data.classes.values() if department_id is None or c.department_id == department_id]
    scope = "全院" if department_id is None else data.departments.get(department_id, "")

    # Data entry.
    expected = sum(c.expected for c in mine)
    recorded = sum(c.recorded for c in mine)
    if department_id is None:
        groups: dict[int, list[ClassFigures]] = defaultdict(list)
        for c in mine:
            groups[c.department_id].append(c)
        units = [{"name": data.departments.get(d, "?"), "share": _pct(sum(c.recorded for c in cs),
                                                                       sum(c.expected for c in cs)),
                  "ratio": sum(c.recorded for c in cs) / max(1, sum(c.expected for c in cs))}
                 for d, cs in groups.items() if sum(c.expected for c in cs)]
        units.sort(key=lambda u: (u["ratio"], u["name"]))
    else:
        units = []
    lowest = sorted((c for c in mine if c.expected and c.recorded < c.expected),
                    key=lambda c: (c.recorded / c.expected, c.code))
    behind = sorted((g for g in data.recorders.get(department_id, {}).values() if g.missing > 0),
                    key=lambda g: (-g.missing, g.name))
    entry = {
        "in_session": week.in_session, "expected": expected, "recorded": recorded,
        "share": _pct(recorded, expected), "units": units,
        "lowest": [{"name": c.name, "share": _pct(c.recorded, c.expected)} for c in lowest[:SHOW_CLASSES]],
        "more_classes": max(0, len(lowest) - SHOW_CLASSES),
        "behind": [{"name": g.name, "missing": g.missing, "share": _pct(g.recorded, g.expected)}
                   for g in behind[:SHOW_RECORDERS]],
        "more_behind": max(0, len(behind) - SHOW_RECORDERS),
    }

    # Domain averages and movers.
    averages = Averages()
    for c in mine:
        averages.merge(c.averages)
    domains = []
    for i, name in enumerate(DOMAINS):
        now, before = averages.domain(i)
        domains.append({"domain": name, "mean": _r(now), "change": _change(now, before)})
    total_now, total_before = averages.total
    movers = sorted(((c.averages.value_added, c) for c in mine if c.averages.value_added is not None),
                    key=lambda t: (-t[0], t[1].code))
    gaining = [{"name": c.name, "added": round(v, 1)} for v, c in movers[:SHOW_MOVERS] if round(v, 1) > 0]
    losing = [{"name": c.name, "added": round(v, 1)} for v, c in reversed(movers[-SHOW_MOVERS:])
              if round(v, 1) < 0]

    # Warnings.
    rows = [w for w in data.warnings if department_id is None or w.department_id == department_id]
    late = timedelta(hours=HANDLE_HOURS)
    categories = []
    all_hours: list[float] = []
    for cat in data.categories:
        ws = [w for w in rows if w.category == cat]
        new = sum(1 for w in ws if data.since <= w.opened_at < data.until)
        open_ = [w for w in ws if w.opened_at < data.until and (w.closed_at is None or w.closed_at >= data.until)]
        overdue = sum(1 for w in open_ if w.first_action is None and w.opened_at + late < data.until)
        due = [w for w in ws if data.since - late <= w.opened_at < data.until - late]
        in_time = sum(1 for w in due if w.first_action is not None and w.first_action - w.opened_at <= late)
        hours = [(w.first_action - w.opened_at).total_seconds() / 3600 for w in ws
                 if w.first_action is not None and w.first_action >= data.since]
        all_hours += hours
        if not (new or open_ or due or hours):
            continue
        sensitive = cat in data.sensitive_categories
        categories.append({
            "name": cat, "sensitive": sensitive, "new": new, "open": len(open_), "overdue": overdue,
            "within": None if sensitive else _pct(in_time, len(due)) if due else "—",
            "median": None if sensitive or not hours else median(hours),
        })
    fa: dict[str, list] = {}
    for rule_id, title, dept, false, closed in data.false_alarms:
        if department_id is not None and dept != department_id:
            continue
        item = fa.setdefault(rule_id, [title, 0, 0])
        item[1] += false
        item[2] += closed
    rules = sorted(((t, f, c) for t, f, c in fa.values() if f), key=lambda x: (-x[1], x[0]))
    warnings = {
        "categories": categories, "median": median(all_hours) if all_hours else None,
        "rules": [{"title": t, "false": f, "closed": c, "share": _pct(f, c)} for t, f, c in rules[:SHOW_RULES]],
        "days": FALSE_ALARM_DAYS,
    }

    # Plan tasks.
    units_tasks = Counter(unit for unit, dept in data.overdue_tasks
                          if department_id is None or dept == department_id)
    tasks = {"total": sum(units_tasks.values()),
             "units": [{"name": u, "count": n} for u, n in
                       sorted(units_tasks.items(), key=lambda t: (-t[1], t[0]))[:SHOW_UNITS]],
             "more": max(0, len(units_tasks) - SHOW_UNITS)}

    return {
        "scope": scope, "college": department_id is None, "week": week, "entry": entry, "domains": domains,
        "total": {"mean": _r(total_now), "change": _change(total_now, total_before)},
        "students": len(averages.total_now), "classes": len(mine),
        "gaining": gaining, "losing": losing, "warnings": warnings, "tasks": tasks,
        "added": _r(averages.value_added),
    }

