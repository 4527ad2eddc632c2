"""Cost of the redaction every log record and every stored error text now passes (issue 13, item 5).

Prints CPU-microseconds per log record through the secret filter, against two baselines measured in the
same run: no filter, and the filter before (plain replacement of the raw secrets only); and per vendor
error text redacted before it is stored. Run: ``python -m bench.bench_redact``.
"""

from __future__ import annotations

import base64
import logging
import time

from kernel.logs import RedactSecrets
from kernel.redact import Redactor

SECRETS = ["ATATT3xFfGF0-jira-api-token-0123456789", "zendesk-api-token-abcdef0123", "jira-webhook-secret-0001"]
USERS = ["ticketpager-bot@acme.example", "api@acme.example"]
RECORDS = 20_000
BASIC = base64.b64encode(f"{USERS[0]}:{SECRETS[0]}".encode()).decode()
VENDOR_TEXT = (
    f'jira answered HTTP 401: {{"errorMessages": ["credential {BASIC} rejected", "the API token {SECRETS[0]} '
    'is not valid"]} (authentication failed: check TICKETPAGER_JIRA__EMAIL and TICKETPAGER_JIRA__API_TOKEN)'
)


class _OldFilter(logging.Filter):
    """The filter as it was: the raw secrets replaced, nothing else."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted(secrets, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _records() -> list[logging.LogRecord]:
    args = ("OPS-1234", "ops-highest", 3, 1.5)
    message = "event %s rule %s attempt %d wait %.1f"
    return [
        logging.LogRecord("ticketpager.delivery", logging.INFO, __file__, 1, message, args, None)
        for _ in range(RECORDS)
    ]


def _per_record(check: logging.Filter | None) -> float:
    """The best of three runs (the machine may be shared): CPU-microseconds per record."""
    best = float("inf")
    for _ in range(3):
        records = _records()
        start = time.process_time()
        for record in records:
            if check is not None:
                check.filter(record)
            record.getMessage()  # what formatting costs anyway
        best = min(best, (time.process_time() - start) / RECORDS * 1e6)
    return best


def main() -> None:
    none = _per_record(None)
    old = _per_record(_OldFilter(SECRETS))
    new = _per_record(RedactSecrets(redactor=Redactor(SECRETS, USERS)))
    print(f"log record, no filter      {none:7.2f} CPU-us")
    print(f"log record, old filter     {old:7.2f} CPU-us  ({old / none:.2f}x no filter)")
    print(f"log record, one redaction  {new:7.2f} CPU-us  ({new / none:.2f}x no filter, {new / old:.2f}x old)")
    redactor = Redactor(SECRETS, USERS)
    start = time.process_time()
    for _ in range(RECORDS):
        redactor.redact(VENDOR_TEXT)
    per_error = (time.process_time() - start) / RECORDS * 1e6
    print(f"vendor error text ({len(VENDOR_TEXT)} chars) redacted  {per_error:7.2f} CPU-us")


if __name__ == "__main__":
    main()
