"""What a careless proxy or gateway in front of a vendor answers: the request's credentials, echoed."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote


def credential_echo(authorization: str | None) -> dict[str, Any]:
    """A 401 body as a careless gateway writes it: the request's credentials in the forms they travel in
    (the Authorization value, the bare Basic credential, the password raw and URL-encoded), unlabelled
    and first (a vendor's text is cut after a few hundred characters)."""
    header = authorization or ""
    scheme, _, value = header.partition(" ")
    secret = value
    if scheme.lower() == "basic":
        secret = base64.b64decode(value).decode().partition(":")[2]
    return {
        "errorMessages": [
            f"credential {value} rejected",
            f"the API token {secret} is not valid",
            f"see /login?next={quote(secret, safe='')}",
            f"Unauthorized (echo: {header})",
        ]
    }
