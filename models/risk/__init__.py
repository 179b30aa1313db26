"""Early warnings (预警): rules as data, evaluation from aggregates, routing that respects privacy,
escalation, closing the loop, and the measures the digest reports. Import from the modules:

- `rules`      the rule book: `risk_rules.toml` read and checked (`rule_book(settings, catalogue)`).
- `aggregates` windows and the one GROUP BY that serves every rule's window.
- `matching`   which students a rule finds (`find`, `rules_touched`), evidence as values.
- `warnings`   opening, adding to and raising warnings from findings (`apply_findings`); reading them.
- `routing`    who is told (`Advisers`: who advises which students), privacy (`may_see`), the
               weekly cap and bundles, queued in the outbox (`Notifier`).
- `notices`    what is told, as values (`WarningView`, `WarningNotice`, `WarningBundle`) and the
               `Notify` protocol that turns them into words (scheduler/notify/warnings.py).
- `checks`     the ways in: `scan`, `evaluate_entries`, `raise_flag`, `close_warning`, `escalate`.
- `measures`   time to first action, handled within 72 h, false alarms per rule.
- `clock`      stored UTC times shown in the service's time zone.

Evaluation is set-based: one aggregate per (student, point) over each rule's window, all windows
from one GROUP BY, then pure matching; the daily scan (every student) and the check right after a
recording (the students recorded) share it. One warning is open per (student, category). Messages
go through the outbox, written in the same transaction as the warnings; a `RiskNotice` row per
(warning, person, event) makes every rerun send nothing new. The domain renders nothing.
"""
