"""Policy and status persistence (SQLAlchemy 2; SQLite by default, PostgreSQL supported)."""

from .db import default_db_path, normalize_url
from .repository import ApplyResult, Identity, ObjectChange, ProxyStatus, Store

__all__ = [
    "ApplyResult",
    "Identity",
    "ObjectChange",
    "ProxyStatus",
    "Store",
    "default_db_path",
    "normalize_url",
]
