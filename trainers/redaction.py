"""URLs without their passwords: what may be printed, logged, tagged, exported or raised.

Storage URLs (`postgresql://user:secret@host/db`) and tracking URIs
(`http://user:secret@host:5000`) may carry a password; every message, log line, MLflow tag and
exported file shows them through `redact`. SQLAlchemy parses both kinds; anything it cannot
parse still has a `scheme://user:password@` part masked.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_USER_AND_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)[^@\s]+@")


def redact(url: str) -> str:
    """The URL with any password replaced by `***`."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        shown = url
    return hide_passwords(shown)


def hide_passwords(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it replaced by `***`."""
    return _USER_AND_PASSWORD.sub(lambda match: f"{match['head']}***@", text)
