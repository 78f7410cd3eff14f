"""Property-based fuzzing of the console against its own OpenAPI document (schemathesis): never a 500.

Every operation of ``/api/v1/openapi.json`` gets generated inputs (valid and invalid), sent with an
admin's token, and with the store's operator token for the operators' routes; whatever comes in,
the answer is a 2xx, 3xx or 4xx in the product's error shape, never a server error. Examples per
operation are bounded to keep the run to a minute or two on a small machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from console.app import OPENAPI_URL
from consumers.clickhouse import Client
from tests.console_support import ACCOUNT, OPERATOR_TOKEN, fill, make_app, token
from tests.support import Conversation, alert, migrated_database


@pytest.fixture(scope="module")
def fuzz_db(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        events = (
            Conversation("c-1", app_id="support-bot", account_id=ACCOUNT).user(0).bot(1).transfer("started", 2).events
        )
        fill(chdb_client, database, [*events, alert(3, app_id="support-bot", account_id=ACCOUNT)])
        yield database


@pytest.fixture(scope="module")
def console_schema(chdb_client: Client, fuzz_db: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi(OPENAPI_URL, make_app(chdb_client, fuzz_db))


def fuzz(operation: Any, bearer: str) -> None:
    """Drive one operation with its hypothesis strategy (schemathesis's pytest plugin is not used)."""

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {bearer}"})
        what = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
        assert response.status_code < 500, what
        if response.status_code >= 400:
            assert "error" in response.json(), f"errors come in the product's shape: {what}"

    no_server_error()


def test_no_input_makes_a_server_error(console_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in console_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        fuzz(operation, OPERATOR_TOKEN if "operators" in (operation.tags or []) else token())
