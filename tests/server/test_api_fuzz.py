"""Schemathesis against the OpenAPI schema of the running app: no 5xx, no schema violations.

Generated requests (valid and invalid: wrong types, huge numbers, odd strings) hit every
operation; each response must not be a server error and must match the documented schema.
"""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from app.main import create_app

# The app reads its settings and opens its database at the first request, which happens
# inside the test, after `settings_env` pointed them at that test's database.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case, settings_env: None) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance,
                                   content_type_conformance])
