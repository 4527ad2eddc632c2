"""The one settings tree: environment (prefix ``TICKETPAGER_``, nested delimiter ``__``), ``.env``, or code.

Examples: ``TICKETPAGER_DATABASE_URL``, ``TICKETPAGER_RULES_PATH``,
``TICKETPAGER_PAGERDUTY__EVENTS_URL``, ``TICKETPAGER_JIRA__WEBHOOK_SECRETS='["s1","s2"]'``.
Every secret is a :class:`~pydantic.SecretStr`, so it never shows in ``repr``, logs or errors.
Tests build :class:`Settings` directly (``Settings(database_url=..., _env_file=None)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import NestedSecretsSettingsSource

from connectors import registry
from connectors.settings import (  # noqa: F401 (re-exported: the sections of the built-in systems)
    ConnectorSettings,
    Count,
    CountOr0,
    JiraSettings,
    NonNegative,
    Positive,
    ServiceNowSettings,
    ZendeskSettings,
    secret_list,
)
from ticketpager.secretfiles import configured_dir

# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (US) and the EU service region
PAGERDUTY_EVENTS_URL_US = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_EVENTS_URL_EU = "https://events.eu.pagerduty.com/v2/enqueue"
# REST API v2 base URLs per service region (connectors.pagerduty_rest.API_URLS, DOC_REGIONS there)
PAGERDUTY_API_URL_US = "https://api.pagerduty.com"
PAGERDUTY_API_URL_EU = "https://api.eu.pagerduty.com"

#: a TCP port (TICKETPAGER_PORT, ``serve --port``): 0, "any free port", would log one port and listen on another
MIN_PORT, MAX_PORT = 1, 65535
Port = Annotated[int, Field(ge=MIN_PORT, le=MAX_PORT)]
#: the smallest header limit that still holds a webhook's request line and signature headers
MIN_HEADER_BYTES = 1024
HeaderBytes = Annotated[int, Field(ge=MIN_HEADER_BYTES)]

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "examples"


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


class PagerDutySettings(BaseModel):
    region: Literal["us", "eu"] = "us"

    _region = field_validator("region", mode="before")(_lower)
    events_url: str = ""  # overrides region; e.g. a proxy or a mock
    timeout_seconds: Positive = 10.0  # HTTP timeout in seconds; each retry waits longer, up to 4 × this
    rate_limit_per_minute: Count = 120  # per routing key, all replicas together; PagerDuty's Events API v2 limit
    max_attempts: Count = 12  # attempts before a dead letter (never on a 429 or Retry-After answer: see the budget)
    max_retry_seconds: Positive = 3600.0  # retry budget from the first failure (a Retry-After past it: dead letter)
    backoff_base_seconds: Positive = 1.0
    backoff_cap_seconds: Positive = 300.0
    workers: Count = 4
    source_name: str = "ticketpager"  # payload.source fallback
    # the way back (PagerDuty webhooks v3 and REST API v2, issue 16)
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list
    )  # v3 webhook signing secret(s) for POST /webhooks/pagerduty; comma-separated or a JSON list, two while rotating
    api_token: SecretStr = SecretStr("")  # REST API key: which incident is ours; subscribe, ping, updates, --online
    from_email: str = ""  # the PagerDuty user REST writes act as (From header); its actions are our own echoes
    from_user_id: str = ""  # that user's id (PXXXXXX; empty: looked up by FROM_EMAIL): its actions are our echoes
    api_url: str = ""  # overrides the region's REST API base URL; e.g. a proxy or a mock
    incident_check_seconds: NonNegative = 300.0  # with API_TOKEN: how often to ask about quiet open incidents; 0: never
    incident_check_quiet_seconds: NonNegative = 600.0  # …those with no news (a lost webhook?), unchecked this long

    _split_secrets = field_validator("webhook_secrets", mode="before")(secret_list)

    @property
    def url(self) -> str:
        if self.events_url:
            return self.events_url
        return PAGERDUTY_EVENTS_URL_EU if self.region == "eu" else PAGERDUTY_EVENTS_URL_US

    @property
    def rest_url(self) -> str:
        """The REST API v2 base URL: ``api_url`` if set, else the region's."""
        if self.api_url:
            return self.api_url.rstrip("/")
        return PAGERDUTY_API_URL_EU if self.region == "eu" else PAGERDUTY_API_URL_US

    @property
    def webhook_configured(self) -> bool:
        return any(s.get_secret_value() for s in self.webhook_secrets)


class EngineSettings(BaseModel):
    batch_size: Count = 50
    idle_seconds: Positive = 1.0  # the idle look for work another replica left (changes, due rows, webhooks)
    recheck_interval_seconds: Positive = 60.0  # time rules: re-evaluate open, unpaged tickets this often
    lease_seconds: Positive = 30.0  # poller / scheduler leases between replicas
    claim_seconds: Positive = 60.0  # a claimed outbox row is retried after this even if its replica lives (a stall)
    gauge_interval_seconds: Positive = 5.0  # how often outbox / dead-letter / rules gauges are refreshed
    heartbeat_seconds: Positive = 2.0  # how often each replica records in the database that it is alive
    replica_timeout_seconds: Positive = 10.0  # a replica silent this long is dead: its claims and leases are taken over
    write_back_workers: CountOr0 = 2  # threads writing notes and updates to tickets; 0: pagerduty.workers do it

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> EngineSettings:
        # a replica must miss at least two heartbeats before the others take its work
        if not 0 < self.heartbeat_seconds <= self.replica_timeout_seconds / 2:
            raise ValueError(
                "engine.heartbeat_seconds must be above 0 and at most half of engine.replica_timeout_seconds"
            )
        return self


class HttpSettings(BaseModel):
    """Limits of the HTTP edge, enforced before any signature check (see :mod:`ticketpager.edge`)."""

    max_header_bytes: HeaderBytes = 65536  # request line + headers over this get 431 and the connection closes
    max_header_fields: Count = 100  # header fields (trailers included) per request; past this 431, closed
    header_timeout_seconds: Positive = 10.0  # the whole header block must arrive within this (else 408, closed)
    body_timeout_seconds: Positive = 30.0  # the whole body must arrive within this after the headers (else 408)
    keepalive_timeout_seconds: Positive = 5.0  # an idle keep-alive connection is closed after this
    max_connections: Count = 100  # open connections per process; past this a new one gets 503 and is closed
    drain_bytes: CountOr0 = 8 * 1024 * 1024  # an over-limit body up to this size is read and discarded before the 413
    linger_seconds: NonNegative = 2.0  # after a refusal, unread input is discarded this long so the answer is not lost


class ConsoleSettings(BaseModel):
    """The admin console under ``/console`` (see :mod:`ticketpager.console` and docs/console.md)."""

    enabled: bool = False  # serve the admin console at /console (off by default; needs a token or a user below)
    token: SecretStr = SecretStr("")  # log in with this token: full access (retry dead letters)
    readonly_token: SecretStr = SecretStr("")  # log in with this token: read-only (pages and the playground)
    username: str = ""  # log in with this user name and the password whose hash is password_hash
    password_hash: SecretStr = SecretStr("")  # pbkdf2_sha256$… from `python -m ticketpager.console.auth`
    user_readonly: bool = False  # the username login is read-only
    session_secret: SecretStr = SecretStr("")  # signs session cookies (same on every replica); empty: from the above
    session_hours: Positive = 12.0  # a login lasts this long
    trust_proxy_headers: bool = False  # honour X-Forwarded-For / -Prefix / -Proto (only behind your own reverse proxy)

    @model_validator(mode="after")
    def _login_configured(self) -> ConsoleSettings:
        if self.enabled and not self.has_login:
            raise ValueError(
                "console.enabled needs a way to log in: TICKETPAGER_CONSOLE__TOKEN, __READONLY_TOKEN, or "
                "__USERNAME with __PASSWORD_HASH"
            )
        return self

    @property
    def has_login(self) -> bool:
        return bool(
            self.token.get_secret_value()
            or self.readonly_token.get_secret_value()
            or (self.username and self.password_hash.get_secret_value())
        )


class SettingsBase(BaseSettings):
    """Everything ticketpager can be told but the systems' sections (:data:`Settings` adds one per
    registered system). See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="TICKETPAGER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    database_url: str = "sqlite:///ticketpager.db"
    rules_path: Path = EXAMPLE_RULES
    connections_file: Path | None = None  # YAML of named connections beyond one per system (README "Several instances")
    host: str = "127.0.0.1"
    port: Port = 8080
    dry_run: bool = False
    insecure_webhooks: bool = False  # accept unsigned webhooks for sources without a secret (never in prod)
    max_body_bytes: Count = 1024 * 1024
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    _level = field_validator("log_level", mode="before")(_upper)
    log_format: Literal["text", "json"] = "text"

    _format = field_validator("log_format", mode="before")(_lower)
    metrics_token: SecretStr = SecretStr("")  # if set, /metrics and /admin need "Authorization: Bearer …"
    public_url: str = ""  # how PagerDuty links back to ticketpager, if at all
    secrets_dir: Path | None = None  # a directory of secret files named like these variables (docs/operations.md)
    retention_days: Count = 30  # decision log and stored payloads are pruned after this many days

    pagerduty: PagerDutySettings = Field(default_factory=PagerDutySettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    # then one section per registered system (connectors.registry): jira, zendesk, servicenow, …

    @model_validator(mode="before")
    @classmethod
    def _empty_rules_path_is_unset(cls, data: object) -> object:
        """``TICKETPAGER_RULES_PATH=`` (compose) or ``value: ""`` (Kubernetes) means not set, as for
        ``TICKETPAGER_SECRETS_DIR``: never ``Path("")``, the working directory's ``*.yaml`` files as rules."""
        if not isinstance(data, dict):
            return data
        empty = {"rules_path", "connections_file"}
        return {n: v for n, v in data.items() if not (n in empty and isinstance(v, str) and not v.strip())}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Code, then the environment, then ``.env``, then the files of ``TICKETPAGER_SECRETS_DIR``: one file
        per variable, named like it, nested settings included (``TICKETPAGER_JIRA__API_TOKEN``)."""
        directory = configured_dir(getattr(init_settings, "init_kwargs", {}))
        if directory is None:
            return init_settings, env_settings, dotenv_settings
        files = NestedSecretsSettingsSource(file_secret_settings, secrets_dir=directory, secrets_dir_missing="error")
        return init_settings, env_settings, dotenv_settings, files

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """pydantic's fields for ``repr`` and ``str``, the database URL's password masked: the URL is a plain
        string (SQLAlchemy, Alembic and the tests take it as one), yet no secret may show (docs/operations.md §8)."""
        from sync.db import masked_url

        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "database_url" and isinstance(value, str) else value

    def connector(self, source: str) -> ConnectorSettings:
        value = getattr(self, source, None)
        if not isinstance(value, ConnectorSettings):
            raise KeyError(source)
        return value


def _sections() -> dict[str, Any]:
    """One ``TICKETPAGER_<NAME>__*`` section per registered system, in registry order."""
    sections: dict[str, Any] = {}
    for system in registry.systems():
        if system.name in SettingsBase.model_fields:
            raise ValueError(f"system {system.name!r} would replace the setting {system.name!r}: rename it")
        sections[system.name] = (system.settings, Field(default_factory=system.settings))
    registry.freeze()  # a system registered from now on could not have settings
    return sections


if TYPE_CHECKING:
    Settings = SettingsBase
else:
    Settings = create_model("Settings", __base__=SettingsBase, __module__=__name__, **_sections())
    Settings.__doc__ = "Everything ticketpager can be told. See the README's settings table."
