"""An ``Authorization`` value is redacted whatever its scheme, known secret or not (issue 13, item 5): the
header forms that no ``Bearer``/``Basic``/``token=`` shape covers — Okta's ``SSWS``, a bare key, a
proxy's — are the ones a gateway echoing request headers shows."""

from __future__ import annotations

import pytest

from kernel.redact import Redactor

CASES = {
    "Authorization: SSWS 00QCjAl4MlV-WPXM0abc": ("00QCjAl4MlV-WPXM0abc", "Authorization: SSWS [redacted]"),
    "authorization: 9f8e7d6c5b4a3210": ("9f8e7d6c5b4a3210", "authorization: [redacted]"),
    '{"Proxy-Authorization": "Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnag"}': (
        "YIIGhgYGKwYBBQUCoIIGejCCBnag",
        '{"Proxy-Authorization": "Negotiate [redacted]"}',
    ),
    "headers: Authorization=ApiKey k_live_0042x, Accept=json": (
        "k_live_0042x",
        "headers: Authorization=ApiKey [redacted], Accept=json",
    ),
}


@pytest.mark.parametrize("text", CASES)
def test_an_authorization_value_of_any_scheme_is_redacted(text: str) -> None:
    secret, expected = CASES[text]
    out = Redactor().redact(text)
    assert secret not in out
    assert out == expected
