"""Configuration, read once from the environment (a `.env` file may supply it)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

from core.schedules import (
    CycleSettings,
    ReminderSettings,
    cycle_settings,
    default_schedules,
    job_schedules,
    reminder_settings,
)

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_WECOM_API = "https://qyapi.weixin.qq.com/cgi-bin/"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads; built once by `load_settings`."""

    database_url: str
    redis_url: str | None
    timezone: str
    public_base_url: str
    secret_key: str
    wecom_corp_id: str | None = None
    wecom_agent_id: str | None = None
    wecom_secret: str | None = None
    wecom_token: str | None = None
    wecom_aes_key: str | None = None
    wecom_api_base: str = OFFICIAL_WECOM_API
    mp_app_id: str | None = None
    mp_app_secret: str | None = None
    mp_token: str | None = None
    mp_aes_key: str | None = None
    mp_api_base: str | None = None
    mp_template_weekly: str | None = None  # template id of the weekly card (unset: customer-service messages)
    mp_template_notice: str | None = None  # template id of other pushes
    bind_code_days: int = 7  # days a binding code stays valid
    page_link_hours: int = 72  # validity of a page link in a message
    page_session_hours: int = 12  # validity of a page session
    export_link_hours: int = 24  # validity of an `导出` link
    catalogue_path: Path = field(default=ROOT / "models" / "catalogue.toml")
    roster_cache_seconds: float = 30.0
    outbox_claim_seconds: float = 120.0  # a claimed outbox row not finished within this is taken up again
    outbox_concurrency: int = 24  # WeCom calls one flush keeps in flight at once
    wecom_calls_per_minute: int = 9000  # the app's cap on WeCom API calls (WeCom allows about 10,000)
    metrics_token: str | None = None  # when set, /metrics asks for `Authorization: Bearer <token>`
    risk_rules_path: Path = field(default=ROOT / "models" / "risk" / "risk_rules.toml")
    # WARNING_ESCALATE_AFTER_DAYS / WARNING_WEEKLY_CAP as given: they override the rules file's [policy]
    risk_policy_overrides: dict[str, str] = field(default_factory=dict)
    production: bool = False
    # The scheduler (scheduler/runner.py): its lease, how often it flushes the outbox and beats.
    scheduler_lease_seconds: int = 30
    outbox_flush_seconds: int = 60
    scheduler_heartbeat_seconds: int = 300
    # When each job runs (job id → cron fields) and on which days the reminder and plan-cycle jobs act.
    schedules: dict[str, dict[str, str]] = field(default_factory=default_schedules)
    reminders: ReminderSettings = field(default_factory=ReminderSettings)
    cycle: CycleSettings = field(default_factory=CycleSettings)
    # Set under gunicorn (gunicorn.conf.py): every worker's metrics counted in files there.
    prometheus_multiproc_dir: str | None = None

    @property
    def wecom_enabled(self) -> bool:
        return bool(self.wecom_corp_id and self.wecom_token and self.wecom_aes_key)


def default_database_url() -> str:
    """The embedded SQLite default: a file under `instance/`."""
    instance = ROOT / "instance"
    instance.mkdir(exist_ok=True)
    return f"sqlite:///{instance / 'chuzhika.db'}"


def _development_secret() -> str:
    """A key kept in instance/, so links made by one development process open in another."""
    path = ROOT / "instance" / "secret_key"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _whole(name: str, text: str, unit: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r}: expected a whole number of {unit}, at least 1")
    return int(text)


def load_settings(overrides: dict | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the environment (and `.env`) into a `Settings`, once; `overrides` win. With `environ`,
    read that mapping instead (and no `.env`). A malformed value raises ValueError naming its variable."""
    if environ is None:
        load_dotenv(ROOT / ".env", override=False)
        environ = os.environ

    def _env(name: str, default: str | None = None) -> str | None:
        value = environ.get(name)
        return value if value not in (None, "") else default

    def stripped(name: str) -> str | None:
        value = (environ.get(name) or "").strip()
        return value or None

    def seconds(name: str, default: int) -> int:  # as before: anything but digits is the default
        value = environ.get(name, "")
        return int(value) if value.isdigit() else default

    production = _env("APP_ENV", "development") == "production"
    secret = _env("SECRET_KEY")
    if secret is None:
        if production:
            raise RuntimeError("SECRET_KEY is required in production")
        secret = _development_secret()
    values = dict(
        database_url=_env("DATABASE_URL") or default_database_url(),
        redis_url=_env("REDIS_URL"),
        timezone=_env("APP_TIMEZONE", "Asia/Shanghai"),
        public_base_url=_env("PUBLIC_BASE_URL", "http://localhost:8000"),
        secret_key=secret,
        wecom_corp_id=_env("WECOM_CORP_ID"),
        wecom_agent_id=_env("WECOM_AGENT_ID"),
        wecom_secret=_env("WECOM_SECRET"),
        wecom_token=_env("WECOM_TOKEN"),
        wecom_aes_key=_env("WECOM_AES_KEY"),
        wecom_api_base=_env("WECOM_API_BASE", OFFICIAL_WECOM_API),
        mp_app_id=_env("MP_APP_ID"),
        mp_app_secret=_env("MP_APP_SECRET"),
        mp_token=_env("MP_TOKEN"),
        mp_aes_key=_env("MP_AES_KEY"),
        mp_api_base=_env("MP_API_BASE"),
        mp_template_weekly=_env("MP_TEMPLATE_WEEKLY"),
        mp_template_notice=_env("MP_TEMPLATE_NOTICE"),
        bind_code_days=_whole("BIND_CODE_DAYS", stripped("BIND_CODE_DAYS") or "7", "days"),
        page_link_hours=_whole("PAGE_LINK_HOURS", stripped("PAGE_LINK_HOURS") or "72", "hours"),
        page_session_hours=_whole("PAGE_SESSION_HOURS", stripped("PAGE_SESSION_HOURS") or "12", "hours"),
        export_link_hours=_whole("EXPORT_LINK_HOURS", stripped("EXPORT_LINK_HOURS") or "24", "hours"),
        metrics_token=_env("METRICS_TOKEN"),
        production=production,
        scheduler_lease_seconds=seconds("SCHEDULER_LEASE_SECONDS", 30),
        outbox_flush_seconds=seconds("OUTBOX_FLUSH_SECONDS", 60),
        scheduler_heartbeat_seconds=seconds("SCHEDULER_HEARTBEAT_SECONDS", 300),
        schedules=job_schedules(stripped),
        reminders=reminder_settings(stripped),
        cycle=cycle_settings(stripped),
        prometheus_multiproc_dir=_env("PROMETHEUS_MULTIPROC_DIR"),
    )
    if _env("ROSTER_CACHE_SECONDS"):
        values["roster_cache_seconds"] = float(_env("ROSTER_CACHE_SECONDS"))
    if _env("OUTBOX_CLAIM_SECONDS"):
        values["outbox_claim_seconds"] = float(_env("OUTBOX_CLAIM_SECONDS"))
    if _env("OUTBOX_CONCURRENCY"):
        values["outbox_concurrency"] = max(1, int(_env("OUTBOX_CONCURRENCY")))
    if _env("WECOM_CALLS_PER_MINUTE"):
        values["wecom_calls_per_minute"] = max(2, int(_env("WECOM_CALLS_PER_MINUTE")))
    if _env("RISK_RULES_PATH"):
        values["risk_rules_path"] = Path(_env("RISK_RULES_PATH"))
    values["risk_policy_overrides"] = {
        name: _env(name) for name in ("WARNING_ESCALATE_AFTER_DAYS", "WARNING_WEEKLY_CAP") if _env(name)}
    if _env("CATALOGUE_PATH"):
        values["catalogue_path"] = Path(_env("CATALOGUE_PATH"))
    values.update(overrides or {})
    if not values["wecom_api_base"].endswith("/"):
        values["wecom_api_base"] += "/"
    return Settings(**values)
