"""Property-based fuzzing of the admin API, driven by its own OpenAPI document.

schemathesis generates requests for every operation (valid and invalid bodies, paths,
query strings) and sends them to the app in-process with an admin token: no answer may be a
5xx, and every answer must be one the document declares (status, content type, body schema).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from controlplane.api.app import create_app
from controlplane.policy import Bundle
from controlplane.store import Store
from controlplane.store.tokens import add_token

_DIR = Path(__file__).parent
_state: dict[str, object] = {}


def _app() -> object:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="api-fuzz-"))
    store = Store(str(folder / "gw.db"), create=True)
    store.apply(
        Bundle.parse(
            {
                "gateways": [{"name": "users-api", "port": 18080}],
                "clusters": [{"name": "users-api", "endpoints": ["127.0.0.1:9000"]}],
                "routes": [
                    {"name": "users-api", "gateways": ["users-api"], "cluster": "users-api"}
                ],
                "consumers": [{"name": "users-api"}],
            }
        )
    )
    _state["token"] = add_token(store, "fuzz", "admin")
    _state["store"] = store
    return create_app(store)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
# the coverage phase enumerates every boundary of every field: thousands of requests, minutes
# on a busy machine; the fuzzing phase (valid and invalid data mixed) stays under a minute
schema.config.phases.coverage.enabled = False

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_document(case: schemathesis.Case) -> None:
    if case.query and "wait" in case.query:
        case.query.pop("wait")  # no controller here: a wait would only time out
    case.call_and_validate(headers={"Authorization": f"Bearer {_state['token']}"}, checks=CHECKS)
