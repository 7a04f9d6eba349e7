"""/openapi.json: it describes exactly the routes the app serves, and schemathesis, generating
requests from it against a live server, finds answers that match it and no server error."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings

from mojavox_notify.openapi import OPERATIONS, route_path
from mojavox_notify.settings import load_settings

from .support.apps import LiveApp
from .support.tokens import TEST_SECRET, token

CALLER = token("schemathesis", ["service", "admin"], ttl=3600)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openapi")
    live = LiveApp(load_settings(None, environ={}, overrides={
        "data_dir": str(folder), "storage.url": f"sqlite:///{folder / 'notify.db'}",
        "auth.secret": TEST_SECRET, "retention.cleanup_interval_minutes": 0,
        "rate_limits.requests_per_minute": 0, "rate_limits.notifications_per_minute": 0,
        "auth.failed_per_minute_per_ip": 0}))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api_schema(live):
    status, document = live.run(live.request("GET", "/openapi.json", None, None))
    assert status == 200
    return schemathesis.openapi.from_dict(document)


def test_the_document_describes_every_route_and_only_those(live):
    status, document = live.run(live.request("GET", "/openapi.json", None, None))
    described = {(path, method) for path, methods in document["paths"].items() for method in methods}
    served = set()
    for rule in live.app._http.request_callback.default_router.rules[0].target.rules:
        handler = rule.target
        path = route_path(rule.matcher.regex.pattern)
        if path.startswith(("/api/", "/healthz", "/metrics", "/protocol.json", "/openapi.json")):
            served |= {(path, method) for method in ("get", "post", "put", "delete")
                       if (path, method) in OPERATIONS and hasattr(handler, method)}
    assert described == served
    assert set(OPERATIONS) >= described


def test_the_api_answers_as_described(api_schema, live):
    """Every operation, with generated parameters and bodies (valid and not): answers match
    their status codes, media types and schemas, schema-invalid requests are refused, and
    nothing is a 5xx (schemathesis' default checks). Not checked: that every schema-valid request
    is accepted, since some rules are beyond JSON Schema (a title that is only markup, an
    actionUrl to a host not allowed, an expiresAt in the past, a push endpoint on a private
    address); those answer 400 naming the field."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS)
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def answers_as_described(case):
            case.call_and_validate(base_url=live.base, headers={"Authorization": f"Bearer {CALLER}"},
                                   excluded_checks=[positive_data_acceptance])

        answers_as_described()
