"""Settings models of the ticketing systems: what every connector has (:class:`ConnectorSettings`) and each
built-in system's own section. The application's settings tree (``ticketpager/settings.py``) nests one section per
system registered in :mod:`connectors.registry` (``TICKETPAGER_<NAME>__<SETTING>``); the README settings
table reads each field's trailing ``# comment``.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

# Numeric settings carry their bounds, so a value that would quietly break the service (a 0 s timeout or poll
# interval, 0 workers, a page of 0) stops every command at start with exit 2, naming the setting and the bound.
#: a duration (or rate) above 0: 0 would time out at once, busy-loop or never let anything through
Positive = Annotated[float, Field(gt=0)]
#: a duration where 0 means what the setting's comment says (never, no cache, no wait, no look back)
NonNegative = Annotated[float, Field(ge=0)]
#: a count of at least 1 (workers, a batch, a page, attempts, bytes, days)
Count = Annotated[int, Field(ge=1)]
#: a count where 0 means what the setting's comment says
CountOr0 = Annotated[int, Field(ge=0)]
#: Zendesk's incremental export answers at most this many tickets per page (its ``per_page`` maximum)
ZENDESK_MAX_PAGE_SIZE = 1000
ZendeskPageSize = Annotated[int, Field(ge=1, le=ZENDESK_MAX_PAGE_SIZE)]


def secret_list(value: object) -> object:
    """Accept a JSON list, or one value / comma-separated values, from the environment."""
    if isinstance(value, str):
        if value.strip().startswith("["):
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
    poll_interval_seconds: Positive = 60.0
    lookback_seconds: NonNegative = 3600.0  # the first poll (no stored cursor yet) reads this far back
    write_back: bool = True
    timeout_seconds: Positive = 10.0

    _split = field_validator("webhook_secrets", mode="before")(secret_list)

    @property
    def webhook_configured(self) -> bool:
        return any(s.get_secret_value() for s in self.webhook_secrets)


class JiraSettings(ConnectorSettings):
    url: str = ""  # https://example.atlassian.net or https://jira.example.com
    deployment: Literal["auto", "cloud", "datacenter"] = "auto"  # auto asks /serverInfo; cloud or datacenter
    email: str = ""  # Cloud: the API user's e-mail (basic auth with an API token)
    api_token: SecretStr = SecretStr("")  # Cloud API token, or a Data Center personal access token
    jql: str = ""  # the admin's filter, e.g. "project in (OPS, SUP)"
    overlap_seconds: NonNegative = 300.0  # search is eventually consistent: re-read this much of the window
    page_size: Count = 100
    comment_prefix: str = "[ticketpager]"  # starts every comment ticketpager writes (and is never re-paged)
    group_field: str = ""  # where a rule's assignment group goes: components, or a select-list custom field id
    internal_comment_role: str = ""  # internal comments outside JSM: restrict them to this project role

    _split_fields = field_validator("extra_fields", mode="before")(secret_list)
    extra_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*navigable"]
    )  # polled besides the needed ones (comma-separated or a JSON list)


class ZendeskSettings(ConnectorSettings):
    subdomain: str = ""  # acme for https://acme.zendesk.com
    url: str = ""  # optional full base URL (tests, proxies); overrides subdomain
    email: str = ""
    api_token: SecretStr = SecretStr("")
    signature_tolerance_seconds: Positive = 300.0
    custom_field_names: dict[str, str] = Field(default_factory=dict)  # field id -> name used in rules
    group_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)  # only these groups (empty: all)
    brand_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)  # only these brands (empty: all)
    ratelimit_budget_seconds: NonNegative = 60.0  # a 429 asking to wait longer than this ends the poll (retried later)

    _split_ids = field_validator("group_ids", "brand_ids", mode="before")(secret_list)
    fetch_canonical: bool = True  # trigger-connected webhooks: fetch the ticket when credentials exist
    accept_test_secret: bool = False  # answer 202 (never store) webhooks signed with Zendesk's public test secret
    note_prefix: str = "[ticketpager]"  # starts every internal note; changes that are only such a note never page
    page_size: ZendeskPageSize = 1000  # incremental export per_page (Zendesk's maximum)
    min_request_interval_seconds: NonNegative = 6.0  # incremental export allows 10 requests/minute
    organization_cache_seconds: NonNegative = 600.0  # organization name + tags (VIP rules)


class ServiceNowSettings(ConnectorSettings):
    instance_url: str = ""  # https://acme.service-now.com
    username: str = ""
    password: SecretStr = SecretStr("")
    table: str = "incident"
    query: str = ""  # the admin's encoded query, e.g. "active=true^priority<=2"
    page_size: Count = 100
    bearer_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)  # alternative webhook auth
    signature_tolerance_seconds: Positive = 300.0
    state_map: dict[str, str] = Field(default_factory=dict)  # state value -> new|in_progress|done|deleted
    overlap_seconds: NonNegative = 60.0
    work_note_prefix: str = "[ticketpager]"  # first text of every work note we write (echo detection)
    priority_labels: dict[str, str] = Field(default_factory=dict)  # priority value -> label override

    _split_tokens = field_validator("bearer_tokens", mode="before")(secret_list)
