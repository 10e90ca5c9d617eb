"""The admin API: HTTP/JSON for every operation the CLI has (FastAPI routers)."""
