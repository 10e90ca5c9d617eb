"""Which deprecation and work-in-progress warnings Envoy logs about the gateway's own
configuration are known, and why.

Envoy logs one warning per deprecated field and per work-in-progress API it loads. The
translator avoids deprecated fields wherever Envoy offers a replacement the wire layer can
express; what is left is listed here with the reason. ``tests/translate`` fails on any other
(every golden configuration is validated at warning level), and a launcher can drop the
known ones from what it shows (``is_known_api_warning``).
"""

from __future__ import annotations

import re

__all__ = ["KNOWN_WARNINGS", "api_warnings", "is_known_api_warning", "unknown_api_warnings"]

#: Deprecated or work-in-progress parts of Envoy's API that the gateway's configuration uses
#: knowingly (name prefix -> why). Envoy logs a warning for each when it loads the config.
KNOWN_WARNINGS = {
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig.content_type": (
        "deprecated in Envoy 1.40 for content_type_matcher, which xds-protos 1.85 (the wire "
        "layer, ADR 0001) does not have yet"
    ),
    "envoy.extensions.filters.http.api_key_auth.v3.": (
        "work in progress upstream; Envoy has no stable filter that checks API keys "
        "(tests/e2e/test_auth.py covers what the gateway relies on)"
    ),
    "envoy.type.v3.RateLimitStrategy": (
        "work in progress upstream (the fallback token bucket of the rate_limit_quota filter, "
        "ADR 0051); tests/e2e/test_ratelimit_shared.py covers what the gateway relies on"
    ),
    "envoy.extensions.filters.http.cache_v2.v3.": (
        "work in progress upstream; Envoy's only HTTP cache (README, response caching; "
        "tests/e2e/test_cache.py covers what the gateway relies on)"
    ),
}
_DEPRECATED = re.compile(r"Using deprecated option '([\w.]+)'")
_WIP = re.compile(
    r"message '([\w.]+)' is contained in proto file '[^']*' marked as work-in-progress"
)


def api_warnings(output: str) -> set[str]:
    """Names of the deprecated fields and work-in-progress messages Envoy warned about in
    ``output`` (its log); any other line mentioning either comes back whole, so new wording
    cannot hide one."""
    found = set()
    for line in output.splitlines():
        match = _DEPRECATED.search(line) or _WIP.search(line)
        if match:
            found.add(match.group(1))
        elif "deprecated" in line.lower() or "work-in-progress" in line.lower():
            found.add(line)
    return found


def unknown_api_warnings(output: str) -> set[str]:
    """The warnings of ``output`` that ``KNOWN_WARNINGS`` does not explain."""
    return {w for w in api_warnings(output) if not w.startswith(tuple(KNOWN_WARNINGS))}


def is_known_api_warning(line: str) -> bool:
    """True for one log line that warns about a known deprecated/work-in-progress API."""
    found = api_warnings(line)
    return bool(found) and not unknown_api_warnings(line)
