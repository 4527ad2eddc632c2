"""Issue 13 item 4: the bytes measured against PagerDuty's 512 KB limit are the bytes sent.

A description just under the limit in compact JSON was sent with spaces (524,328 bytes), answered 400 and
dead-lettered. Every event here goes through the real sink to the local PagerDuty fake, which applies the
limit to the bytes it receives, as PagerDuty does.
"""

from __future__ import annotations

import json

import pytest

from connectors.pagerduty import EVENT_BUDGET_BYTES, PagerDutySink, build_event, encode_event
from tests.factories import ticket
from tests.fakes.pagerduty_server import PAGERDUTY_MAX_BYTES, MockPagerDuty, validate_event
from tests.test_pagerduty_event import trigger


def _largest_description(char: str) -> str:
    """The longest description of ``char`` with which the trigger's wire form stays within the budget."""
    empty = len(encode_event(build_event(trigger(custom_details={"description": ""}), ticket())))
    return char * ((EVENT_BUDGET_BYTES - empty) // len(char.encode()))


def test_a_description_just_under_512_kib_in_compact_json_still_pages(pd: MockPagerDuty) -> None:
    """The reproduction: the event is 8 bytes under PagerDuty's limit in compact JSON (what the size check
    measured); sent with spaces it was 40 bytes over. It must arrive."""
    empty = build_event(trigger(custom_details={"description": ""}), ticket())
    padding = PAGERDUTY_MAX_BYTES - 8 - len(json.dumps(empty, separators=(",", ":")).encode())
    body = build_event(trigger(custom_details={"description": "d" * padding}), ticket())
    PagerDutySink(pd.url).send(body)
    assert len(pd.events) == 1, "PagerDuty refused the event: the page would have been a dead letter"
    assert pd.sizes[0] <= PAGERDUTY_MAX_BYTES
    assert pd.sizes[0] == len(encode_event(body)), "the bytes sent are the bytes measured"


@pytest.mark.parametrize("char", ["d", "é", "\U0001f6a8"])  # 1, 2 and 4 bytes in UTF-8
def test_at_the_exact_budget_nothing_is_trimmed_and_one_byte_more_trims(pd: MockPagerDuty, char: str) -> None:
    description = _largest_description(char)
    fits = build_event(trigger(custom_details={"description": description}), ticket())
    over = build_event(trigger(custom_details={"description": description + char}), ticket())
    assert EVENT_BUDGET_BYTES - len(char.encode()) < len(encode_event(fits)) <= EVENT_BUDGET_BYTES
    if char == "d":
        assert len(encode_event(fits)) == EVENT_BUDGET_BYTES, "ASCII reaches the budget exactly"
    assert "ticketpager_trimmed" not in fits["payload"]["custom_details"]
    assert over["payload"]["custom_details"]["ticketpager_trimmed"] == ["description"]
    assert len(encode_event(over)) <= EVENT_BUDGET_BYTES
    sink = PagerDutySink(pd.url)
    sink.send(fits)
    sink.send(over)
    assert pd.sizes == [len(encode_event(fits)), len(encode_event(over))], "measured = sent, byte for byte"
    assert pd.events[0]["payload"]["custom_details"]["description"] == description, "sent untouched"
    assert all(validate_event(e) == [] for e in pd.events)


def test_the_budget_keeps_a_margin_under_512_kb_read_either_way() -> None:
    assert EVENT_BUDGET_BYTES <= 512 * 1000 < PAGERDUTY_MAX_BYTES


def test_an_oversized_body_not_built_here_is_fitted_before_it_is_sent(pd: MockPagerDuty) -> None:
    """A body stored by an older version (or any caller) over the budget is trimmed by the sink, not sent to a
    certain 400."""
    body = build_event(trigger(), ticket())
    body["payload"]["custom_details"]["log"] = "y" * (600 * 1024)
    PagerDutySink(pd.url).send(encode_event(body))
    assert len(pd.events) == 1 and pd.sizes[0] <= EVENT_BUDGET_BYTES
    assert pd.events[0]["payload"]["custom_details"]["ticketpager_trimmed"] == ["log"]
