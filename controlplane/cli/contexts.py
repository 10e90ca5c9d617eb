"""Contexts: named admin API targets in ``$XDG_CONFIG_HOME/gatewayctl/config.json``, and the
order in which one invocation picks where it works.

Resolution order (first that applies wins):

1. ``--db`` (or GATEWAY_DB) given: the local database.
2. ``--context NAME`` (or GATEWAY_CONTEXT): that context.
3. GATEWAY_URL: that URL, token from GATEWAY_TOKEN or GATEWAY_TOKEN_FILE, CA from
   GATEWAY_CA_FILE.
4. The current context of the config file (``gatewayctl context use``).
5. The local database, as without any context (first setup, ``up``).

The file holds where a token is (a file, an environment variable), not the token, unless the
user gave ``--token`` explicitly. It is written mode 0600 in a 0700 directory. JSON, so
reading it costs nothing at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import NotFound, PolicyInvalid

__all__ = [
    "Target",
    "config_path",
    "load_config",
    "path_of",
    "resolve",
    "save_config",
    "target_of",
    "validate_url",
]

#: the fields a context may hold
FIELDS = ("url", "token_file", "token_env", "token", "ca_file", "insecure")


@dataclass(frozen=True)
class Target:
    """Where remote commands go and how they authenticate. The token itself is read only
    when a request is made, so listing contexts never needs it."""

    url: str
    source: str  # "context prod", "GATEWAY_URL": named in messages
    token_file: str | None = None
    token_env: str | None = None
    token_inline: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    def token(self) -> str | None:
        """The bearer token, or None (the server then answers 401)."""
        if self.token_inline:
            return self.token_inline
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise PolicyInvalid(
                    f"{self.source}: environment variable {self.token_env} (the token) is not set"
                )
            return value
        if self.token_file:
            path = os.path.expanduser(self.token_file)
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise PolicyInvalid(
                    f"{self.source}: cannot read token file {self.token_file}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                raise PolicyInvalid(
                    f"{self.source}: token file {self.token_file} is not UTF-8 text"
                ) from None
            if not value:
                raise PolicyInvalid(f"{self.source}: token file {self.token_file} is empty")
            return value
        return None

    def auth_text(self) -> str:
        """Where the token comes from, for ``context list|show`` (never the token)."""
        if self.token_inline:
            return "token (stored in the config file)"
        if self.token_env:
            return f"env {self.token_env}"
        if self.token_file:
            return f"file {self.token_file}"
        return "none"


def path_of(*segments: str) -> str:
    """``/v1/a/b`` with every segment percent-encoded (a name can never add a path level)."""
    return "/v1/" + "/".join(quote(s, safe="") for s in segments)


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gatewayctl" / "config.json"


def load_config() -> dict[str, Any]:
    """The config file's content (``{"current": str|None, "contexts": {name: {...}}}``)."""
    import orjson  # json's import is a few ms of every remote command's start

    path = config_path()
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {"current": None, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise PolicyInvalid(f"{path}: cannot read the gatewayctl config: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        raise PolicyInvalid(f"{path}: not a gatewayctl config (expected an object)")
    data.setdefault("contexts", {})
    data.setdefault("current", None)
    return data


def save_config(data: dict[str, Any]) -> Path:
    """Write the config atomically, mode 0600 (it may hold a token given with --token)."""
    import json

    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # also when an old file had a wider mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def validate_url(url: str, option: str = "--url") -> str:
    """An ``http(s)://host[:port]`` base URL without credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyInvalid(f"{option}: {url!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise PolicyInvalid(f"{option}: the URL must not hold credentials (use a token)")
    if parts.query or parts.fragment:
        raise PolicyInvalid(f"{option}: the URL must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise PolicyInvalid(f"{option}: {url!r} has an invalid port") from None
    return url.rstrip("/")


def target_of(name: str, entry: dict[str, Any]) -> Target:
    return Target(
        url=str(entry.get("url", "")),
        source=f"context {name!r}",
        token_file=entry.get("token_file"),
        token_env=entry.get("token_env"),
        token_inline=entry.get("token"),
        ca_file=entry.get("ca_file"),
        insecure=bool(entry.get("insecure", False)),
    )


def resolve(db: str | None, context: str | None) -> Target | None:
    """Where this invocation works: a Target (admin API) or None (the local database)."""
    if db is not None:
        return None
    env = os.environ
    name = context or env.get("GATEWAY_CONTEXT") or None
    if name:
        entry = load_config()["contexts"].get(name)
        if entry is None:
            raise NotFound(f"context {name!r} does not exist (see `gatewayctl context list`)")
        return target_of(name, entry)
    url = env.get("GATEWAY_URL")
    if url:
        return Target(
            url=validate_url(url, "GATEWAY_URL"),
            source="GATEWAY_URL",
            token_env="GATEWAY_TOKEN" if env.get("GATEWAY_TOKEN") else None,
            token_file=env.get("GATEWAY_TOKEN_FILE") or None,
            ca_file=env.get("GATEWAY_CA_FILE") or None,
            insecure=env.get("GATEWAY_INSECURE", "") in ("1", "true", "yes"),
        )
    config = load_config()
    current = config.get("current")
    if current and current in config["contexts"]:
        return target_of(current, config["contexts"][current])
    return None
