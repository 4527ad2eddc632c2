"""The one fact about PagerDuty the rules and the service both check before anything is sent: the form of a routing
key. Its own module, not :mod:`kernel.model`, so the generic pipeline modules keep no vendor's facts
(tests/test_destination_seams.py); ``rules`` may import only the kernel, so it cannot live in the connector."""

from __future__ import annotations

import re

#: a PagerDuty Events API v2 integration ("routing") key: 32 letters and digits
#: (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/). The service and ``rules check`` both judge
#: a rule's key by it: PagerDuty refuses any other, so every page of the rule would be a dead letter.
INTEGRATION_KEY = re.compile(r"[A-Za-z0-9]{32}")


def is_integration_key(key: str) -> bool:
    """Whether ``key`` has the form of a PagerDuty integration key (see :data:`INTEGRATION_KEY`)."""
    return INTEGRATION_KEY.fullmatch(key) is not None
