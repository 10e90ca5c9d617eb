"""``python -m controlplane.api.openapi``: write the admin API's OpenAPI document to
``schemas/openapi.json`` (tests/test_openapi.py checks it is current)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["PATH", "document", "main"]

PATH = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


def document() -> dict[str, Any]:
    """The document, from the app's routes and the policy models (no database opened)."""
    from .app import create_app

    return create_app(None).openapi()  # type: ignore[arg-type]  # routes need no store


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PATH
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
