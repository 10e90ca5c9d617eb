"""Policy and status persistence (SQLAlchemy 2; SQLite by default, PostgreSQL supported)."""

from .db import default_db_path, normalize_url
from .repository import ApplyResult, ObjectChange, ProxyStatus, Store, Unloadable

__all__ = [
    "ApplyResult",
    "ObjectChange",
    "ProxyStatus",
    "Store",
    "Unloadable",
    "default_db_path",
    "normalize_url",
]
