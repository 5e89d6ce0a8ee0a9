"""The controller's OpenAPI spec tells the truth: schemathesis generates requests for
every operation from the spec itself and checks each answer — no server error, a status
the spec lists for that operation, the content type and a body that fit the schema it
names, authentication the spec asks for enforced, negative data refused. Bounded: a few
examples per operation, in-process against a real controller.

One check is left out: ``positive_data_acceptance`` (anything the schema allows is
accepted). Some refusals are about meaning, not shape, and answer a 422 that names the
field: an upload that is not a loadable ONNX model, a public key that is not PEM, a
rollout policy's own rules, an evaluator this controller does not allow, a reserved
token name, a selector that is not ``key=value``."""

from __future__ import annotations

import schemathesis
from _support import TOKEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from edgefleet.controller.api import create_app

EXAMPLES = 25


def test_every_operation_answers_as_its_spec_says(controller):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(controller))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    failures: dict[str, str] = {}
    for operation in operations:
        try:
            _check(operation.as_strategy())
        except (Exception, BaseExceptionGroup) as exc:  # each operation's first failure
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:600]}"
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())


def _check(strategy: st.SearchStrategy) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                               excluded_checks=[positive_data_acceptance])

    check()
