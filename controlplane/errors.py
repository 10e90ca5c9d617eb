"""One error tree for the whole control plane.

Every error a user can cause is a :class:`GatewayError` whose message is a single line that
names the object and field at fault. The CLI maps each class to its own exit code, so scripts
can tell "you asked for something wrong" from "the system is unwell".
"""

from __future__ import annotations

import re

__all__ = [
    "Conflict",
    "Forbidden",
    "GatewayError",
    "NotFound",
    "PolicyInvalid",
    "PolicyRejected",
    "StoreError",
    "TranslationError",
    "Unauthorized",
    "WaitFailed",
    "redact_urls",
]

#: ``scheme://user:password@`` anywhere in a text (greedy to the last ``@`` of the word,
#: since a password may hold one); the password becomes ``***``
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")


def redact_urls(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``: database URLs
    end up in error messages (a driver's, SQLAlchemy's), which are printed and logged."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


class GatewayError(Exception):
    """Base of every error meant to be read by a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        message = redact_urls(message)  # no error ever carries a database password
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PolicyInvalid(GatewayError):
    """The input does not describe valid policy (schema, value or cross-reference)."""

    exit_code = 2


class PolicyRejected(PolicyInvalid):
    """Valid policy whose Envoy configuration the real Envoy refuses (``envoy --mode
    validate``); refused before commit. Exit 2 like any bad input; the admin API answers
    422 ``rejected``."""


class NotFound(GatewayError):
    """The named object does not exist."""

    exit_code = 3


class Conflict(GatewayError):
    """The change collides with existing state (duplicate name, object still referenced)."""

    exit_code = 4


class StoreError(GatewayError):
    """The policy database could not be reached or migrated."""

    exit_code = 5


class TranslationError(GatewayError):
    """Valid policy that could not be turned into Envoy configuration."""

    exit_code = 6


class WaitFailed(GatewayError):
    """A proxy rejected the change, or did not acknowledge it in time.

    ``revision``: the revision the change was committed as and that stays committed (a
    ``--wait`` without ``--atomic``), so the user learns the write itself took effect;
    None when nothing of the change remains (``--atomic`` restored it) or nothing says."""

    exit_code = 7

    def __init__(self, message: str, revision: int | None = None) -> None:
        super().__init__(message)
        self.revision = revision


class Unauthorized(GatewayError):
    """No credentials, or credentials that are unknown, expired or revoked (HTTP 401)."""

    exit_code = 9


class Forbidden(GatewayError):
    """Valid credentials whose role or gateway scope does not allow the operation (HTTP 403)."""

    exit_code = 9
