"""The REST API against its own OpenAPI schema, with schemathesis: whatever a client sends
that the schema allows (and much that it does not), the running server answers without a
5xx and with a body that matches the schema it published."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, positive_data_acceptance
from sqlalchemy import Engine

from edm import services as services_mod
from edm.api_tokens import create_token
from edm.config import Settings
from edm.contacts import add_contacts
from tests.api_server import api_server

EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def served(db: Engine) -> Iterator[tuple[str, str]]:
    """A server's base URL on a database with something in it, and an admin token."""
    add_contacts(db, [{"email": f"c{i}@example.com", "fields": {"n": str(i)}} for i in range(5)])
    services_mod.add_service(db, "s", "sandbox", 0.0)
    token = create_token(db, "schemathesis", "admin")
    with api_server(db, Settings()) as client:
        yield str(client.base_url).rstrip("/"), token


def test_every_operation_keeps_the_schema(served: tuple[str, str]) -> None:
    base_url, token = served
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    # The management API. Webhooks take a provider's payloads and are tested with those
    # (tests/test_api_webhooks.py).
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if operation.path.startswith("/api/") and not operation.path.startswith("/api/webhooks/")
    ]
    assert len(operations) >= 4, "the API publishes its operations"
    headers = {"Authorization": f"Bearer {token}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def keeps_it(case: schemathesis.Case) -> None:
            # The health check answers 503 when a check is critical, by design. A value the
            # schema allows may still break a rule of the domain's (a name with a control
            # character, an unknown list): a 4xx naming it is right, not a failure.
            excluded = [positive_data_acceptance]
            if case.operation.path == "/api/health":
                excluded.append(not_a_server_error)
            case.call_and_validate(base_url=base_url, headers=headers, excluded_checks=excluded)

        try:
            keeps_it()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc
