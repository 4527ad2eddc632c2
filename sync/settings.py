"""The one settings tree: environment (prefix ``TICKETPAGER_``, nested delimiter ``__``), ``.env``, or code.

Examples: ``TICKETPAGER_DATABASE_URL``, ``TICKETPAGER_RULES_PATH``,
``TICKETPAGER_PAGERDUTY__EVENTS_URL``, ``TICKETPAGER_JIRA__WEBHOOK_SECRETS='["s1","s2"]'``.
Every secret is a :class:`~pydantic.SecretStr`, so it never shows in ``repr``, logs or errors.
Tests build :class:`Settings` directly (``Settings(database_url=..., _env_file=None)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import NestedSecretsSettingsSource

# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (US) and the EU service region
PAGERDUTY_EVENTS_URL_US = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_EVENTS_URL_EU = "https://events.eu.pagerduty.com/v2/enqueue"

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "examples"


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


def _secret_list(value: object) -> object:
    """Accept a JSON list, or one value / comma-separated values, from the environment."""
    if isinstance(value, str):
        if value.strip().startswith("["):
            import json

            try:
                return json.loads(value)
            except ValueError:  # never echo the value: these are secrets
                raise ValueError(
                    'not a JSON list: write ["first","second"] with double quotes, or first,second'
                ) from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ConnectorSettings(BaseModel):
    """What every connector has: on/off, webhook secrets (several, for rotation), polling, write-back."""

    enabled: bool = False
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    poll_interval_seconds: float = 60.0
    lookback_seconds: float = 3600.0  # the first poll (no stored cursor yet) reads this far back
    write_back: bool = True
    timeout_seconds: float = 10.0

    _split = field_validator("webhook_secrets", mode="before")(_secret_list)

    @property
    def webhook_configured(self) -> bool:
        return any(s.get_secret_value() for s in self.webhook_secrets)


class JiraSettings(ConnectorSettings):
    url: str = ""  # https://example.atlassian.net or https://jira.example.com
    deployment: Literal["auto", "cloud", "datacenter"] = "auto"  # auto asks /serverInfo; cloud or datacenter
    email: str = ""  # Cloud: the API user's e-mail (basic auth with an API token)
    api_token: SecretStr = SecretStr("")  # Cloud API token, or a Data Center personal access token
    jql: str = ""  # the admin's filter, e.g. "project in (OPS, SUP)"
    overlap_seconds: float = 300.0  # search is eventually consistent: re-read this much of the window
    page_size: int = 100
    comment_prefix: str = "[ticketpager]"  # starts every comment ticketpager writes (and is never re-paged)

    _split_fields = field_validator("extra_fields", mode="before")(_secret_list)
    extra_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*navigable"]
    )  # polled besides the needed ones (comma-separated or a JSON list)


class ZendeskSettings(ConnectorSettings):
    subdomain: str = ""  # acme for https://acme.zendesk.com
    url: str = ""  # optional full base URL (tests, proxies); overrides subdomain
    email: str = ""
    api_token: SecretStr = SecretStr("")
    signature_tolerance_seconds: float = 300.0
    custom_field_names: dict[str, str] = Field(default_factory=dict)  # field id -> name used in rules
    group_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)  # only these groups (empty: all)
    brand_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)  # only these brands (empty: all)
    ratelimit_budget_seconds: float = 60.0  # a 429 asking to wait longer than this ends the poll (retried later)

    _split_ids = field_validator("group_ids", "brand_ids", mode="before")(_secret_list)
    fetch_canonical: bool = True  # trigger-connected webhooks: fetch the ticket when credentials exist
    accept_test_secret: bool = False  # answer 202 (never store) webhooks signed with Zendesk's public test secret
    note_prefix: str = "[ticketpager]"  # starts every internal note; changes that are only such a note never page
    page_size: int = 1000  # incremental export per_page (Zendesk's maximum)
    min_request_interval_seconds: float = 6.0  # incremental export allows 10 requests/minute
    organization_cache_seconds: float = 600.0  # organization name + tags (VIP rules)


class ServiceNowSettings(ConnectorSettings):
    instance_url: str = ""  # https://acme.service-now.com
    username: str = ""
    password: SecretStr = SecretStr("")
    table: str = "incident"
    query: str = ""  # the admin's encoded query, e.g. "active=true^priority<=2"
    page_size: int = 100
    bearer_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)  # alternative webhook auth
    signature_tolerance_seconds: float = 300.0
    state_map: dict[str, str] = Field(default_factory=dict)  # state value -> new|in_progress|done|deleted
    overlap_seconds: float = 60.0
    work_note_prefix: str = "[ticketpager]"  # first text of every work note we write (echo detection)
    priority_labels: dict[str, str] = Field(default_factory=dict)  # priority value -> label override

    _split_tokens = field_validator("bearer_tokens", mode="before")(_secret_list)


class PagerDutySettings(BaseModel):
    region: Literal["us", "eu"] = "us"

    _region = field_validator("region", mode="before")(_lower)
    events_url: str = ""  # overrides region; e.g. a proxy or a mock
    timeout_seconds: float = 10.0  # HTTP timeout in seconds; each retry waits longer, up to 4 × this
    rate_limit_per_minute: int = 120  # per routing key, all replicas together; PagerDuty's Events API v2 limit
    max_attempts: int = 12  # attempts before a dead letter (never on a 429 or Retry-After answer: see the budget)
    max_retry_seconds: float = 3600.0  # retry budget from the first failure (a Retry-After past it: dead letter)
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 300.0
    workers: int = 4
    source_name: str = "ticketpager"  # payload.source fallback

    @property
    def url(self) -> str:
        if self.events_url:
            return self.events_url
        return PAGERDUTY_EVENTS_URL_EU if self.region == "eu" else PAGERDUTY_EVENTS_URL_US


class EngineSettings(BaseModel):
    batch_size: int = 50
    idle_seconds: float = 0.2  # how long workers wait when there is nothing to do
    recheck_interval_seconds: float = 60.0  # time rules: re-evaluate open, unpaged tickets this often
    lease_seconds: float = 30.0  # poller / scheduler leases between replicas
    claim_seconds: float = 60.0  # a claimed outbox row is retried after this even if its replica lives (a stalled send)
    gauge_interval_seconds: float = 5.0  # how often outbox / dead-letter / rules gauges are refreshed
    heartbeat_seconds: float = 2.0  # how often each replica records in the database that it is alive
    replica_timeout_seconds: float = 10.0  # a replica silent this long is dead: its claims and leases are taken over

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> EngineSettings:
        # a replica must miss at least two heartbeats before the others take its work
        if not 0 < self.heartbeat_seconds <= self.replica_timeout_seconds / 2:
            raise ValueError(
                "engine.heartbeat_seconds must be above 0 and at most half of engine.replica_timeout_seconds"
            )
        return self


class HttpSettings(BaseModel):
    """Limits of the HTTP edge, enforced before any signature check (see :mod:`sync.edge`)."""

    max_header_bytes: int = 65536  # request line + headers over this get 431 and the connection closes
    max_header_fields: int = 100  # header fields (trailers included) per request; past this 431, closed
    header_timeout_seconds: float = 10.0  # the whole header block must arrive within this (else 408, closed)
    body_timeout_seconds: float = 30.0  # the whole body must arrive within this after the headers (else 408)
    keepalive_timeout_seconds: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 100  # open connections per process; past this a new one gets 503 and is closed
    drain_bytes: int = 8 * 1024 * 1024  # an over-limit body up to this size is read and discarded before the 413
    linger_seconds: float = 2.0  # after a refusal, unread input is discarded this long so the answer is not lost


class Settings(BaseSettings):
    """Everything ticketpager can be told. See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="TICKETPAGER_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    database_url: str = "sqlite:///ticketpager.db"
    rules_path: Path = EXAMPLE_RULES
    host: str = "127.0.0.1"
    port: int = 8080
    dry_run: bool = False
    insecure_webhooks: bool = False  # accept unsigned webhooks for sources without a secret (never in prod)
    max_body_bytes: int = 1024 * 1024
    http: HttpSettings = Field(default_factory=HttpSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    _level = field_validator("log_level", mode="before")(_upper)
    log_format: Literal["text", "json"] = "text"

    _format = field_validator("log_format", mode="before")(_lower)
    metrics_token: SecretStr = SecretStr("")  # if set, /metrics and /admin need "Authorization: Bearer …"
    public_url: str = ""  # how PagerDuty links back to ticketpager, if at all
    secrets_dir: Path | None = None  # a directory of secret files named like these variables (docs/operations.md)
    retention_days: int = 30  # decision log and stored payloads are pruned after this many days

    pagerduty: PagerDutySettings = Field(default_factory=PagerDutySettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    jira: JiraSettings = Field(default_factory=JiraSettings)
    zendesk: ZendeskSettings = Field(default_factory=ZendeskSettings)
    servicenow: ServiceNowSettings = Field(default_factory=ServiceNowSettings)

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
        from sync.secretfiles import configured_dir

        directory = configured_dir(getattr(init_settings, "init_kwargs", {}))
        if directory is None:
            return init_settings, env_settings, dotenv_settings
        files = NestedSecretsSettingsSource(file_secret_settings, secrets_dir=directory, secrets_dir_missing="error")
        return init_settings, env_settings, dotenv_settings, files

    def connector(self, source: str) -> ConnectorSettings:
        value = getattr(self, source, None)
        if not isinstance(value, ConnectorSettings):
            raise KeyError(source)
        return value
