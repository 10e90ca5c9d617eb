"""Usage classes of a request (admitted, throttled, unauthenticated, upstream errors,
refused) and how a rollup's status class column carries them.

No imports beyond the standard library: the CLI's remote export formats rows with these
names without loading the database layer.
"""

from __future__ import annotations

__all__ = ["USAGE_CLASSES", "rollup_class", "split_class", "status_class", "usage_class"]


def status_class(code: int) -> str:
    """``2xx`` ... ``5xx``; ``none`` when no response was sent (client reset, timeout...)."""
    return f"{code // 100}xx" if 100 <= code < 600 else "none"


#: usage classes, in the order reports and exports list them (see :func:`usage_class`)
USAGE_CLASSES = ("admitted", "throttled", "unauthenticated", "upstream_errors", "refused")

#: the suffix a rollup's status class carries for a request the gateway itself refused
#: (``4xx:t``): the column holds 8 characters, and rows written before usage classes
#: existed (no suffix) still read as before
_SUFFIX = {"throttled": ":t", "unauthenticated": ":u", "refused": ":r"}
_FROM_SUFFIX = {v[1:]: k for k, v in _SUFFIX.items()}
#: response code details of answers that passed the gateway's checks: the backend's own
#: answer, a route's direct response, a cached answer
_PASSED = ("via_upstream", "direct_response", "cache.")


def usage_class(code: int, details: str, rate_limited: bool) -> str:
    """What a request counts as for usage and billing, from its access-log entry.

    * ``throttled``: refused by the gateway's own rate limits (Envoy's local rate limit sets
      the ``RL`` response flag and the detail ``local_rate_limited``; the quota filter of
      shared budgets and calendar quotas the detail ``rate_limited_by_quota``); a 429 from a
      backend is not one.
    * ``unauthenticated``: a 401 or 403 the gateway generated (authentication, key, scope,
      IP or consumer rules); a backend's own 401/403 is not one.
    * ``upstream_errors``: a 5xx, whether from the backend or from Envoy failing to reach it.
    * ``refused``: no response at all (the client went away) or another answer the gateway
      generated itself (no route, oversized or malformed request, ...).
    * ``admitted``: everything else: the request passed the gateway's checks and the backend
      (or a direct response, or the cache) answered it below 500.
    """
    if rate_limited or details in ("local_rate_limited", "rate_limited_by_quota"):
        return "throttled"
    passed = details.startswith(_PASSED)
    if code in (401, 403) and not passed:
        return "unauthenticated"
    if 500 <= code < 600:
        return "upstream_errors"
    if not 100 <= code < 600 or (code >= 400 and not passed):
        return "refused"
    return "admitted"


def rollup_class(code: int, usage: str) -> str:
    """The status class column of a rollup: the HTTP class, plus a suffix for the usage
    classes the status alone does not tell (see :func:`split_class`)."""
    return status_class(code) + _SUFFIX.get(usage, "")


def split_class(value: str) -> tuple[str, str]:
    """A rollup's status class column -> (HTTP status class, usage class).

    Rows without a suffix (every row written before usage classes existed, and every
    admitted or upstream-error request since) read as admitted, 5xx as upstream errors and
    ``none`` as refused."""
    klass, _, suffix = value.partition(":")
    if suffix:
        return klass, _FROM_SUFFIX.get(suffix, "refused")
    if klass == "5xx":
        return klass, "upstream_errors"
    if klass == "none":
        return klass, "refused"
    return klass, "admitted"
