"""Policy and status persistence (SQLAlchemy 2; SQLite by default, PostgreSQL supported)."""

from .db import default_db_path, normalize_url
from .repository import (
    ApplyResult,
    Identity,
    ObjectChange,
    ProxyStatus,
    SecretsReport,
    Store,
    Unloadable,
    Validator,
    WriteView,
)
from .secrets import SecretKeyError, SecretKeys, write_private_file

__all__ = [
    "ApplyResult",
    "Identity",
    "ObjectChange",
    "ProxyStatus",
    "SecretKeyError",
    "SecretKeys",
    "SecretsReport",
    "Store",
    "Unloadable",
    "Validator",
    "WriteView",
    "default_db_path",
    "normalize_url",
    "write_private_file",
]
