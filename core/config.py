"""Configuration, read once from the environment (a `.env` file may supply it)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_WECOM_API = "https://qyapi.weixin.qq.com/cgi-bin/"

log = logging.getLogger(__name__)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


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


def load_settings(overrides: dict | None = None) -> Settings:
    """Read the environment (and `.env`) into a `Settings`; `overrides` win."""
    load_dotenv(ROOT / ".env", override=False)
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
        metrics_token=_env("METRICS_TOKEN"),
        production=production,
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
