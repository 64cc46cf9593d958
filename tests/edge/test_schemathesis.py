"""schemathesis over the whole OpenAPI document, against the real app (real PostgreSQL, real IdP tokens).

Every operation, stateless, then a stateful run that chains operations (created ids fed into the
next calls), with all of schemathesis' checks: no 5xx, every status and content type and body as
declared (app/openapi.py), required headers, negative data refused, auth not ignored. The caller is
a real customer_admin who owns the workspaces in the path. A second test sends the same operations
with another tenant's ids: none of them may answer 2xx.

Sized for CI (`PALISADE_FUZZ_EXAMPLES` examples per operation, 8 by default) and derandomized:
the same inputs every run, so it cannot flake. `python -m bench.fuzz` runs the long version.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck

from app.config import Settings
from app.main import create_app
from tests.support.api import World, make_world, settings_for

EXAMPLES = int(os.environ.get("PALISADE_FUZZ_EXAMPLES", "5"))
STATEFUL_EXAMPLES = int(os.environ.get("PALISADE_FUZZ_STATEFUL_EXAMPLES", "10"))
STATEFUL_STEPS = int(os.environ.get("PALISADE_FUZZ_STEPS", "10"))

FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every run: never flaky
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


class AppUnderTest:
    """What schemathesis calls: the real app once the fixture has made it (the schema is loaded at
    collection, before any database exists). Its lifespan is run by the fixture's TestClient, not by
    schemathesis' ASGI transport, which would start a second one and keep it until the process exits."""

    app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("the fixture runs the lifespan")  # refused before any message: "no lifespan"
        assert self.app is not None, "use the fuzzed_app fixture"
        await self.app(scope, receive, send)


APP = AppUnderTest()
# The document the app serves at /api/v1/openapi.json (the same for any settings; no database needed).
DOCUMENT = create_app(Settings(_env_file=None, database_url="postgresql://app@localhost/none")).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.app = APP
# Schema-valid input the schema cannot judge, refused with the reason named: a pagination cursor the
# app did not make (400), a file whose bytes are not what its name and type say (400/415). Every
# other refusal of schema-valid input (a 422 above all) still fails the run.
# No NUL characters in generated strings: PostgreSQL cannot store them, so every input model refuses
# them with a 422 naming the field (tests/edge/test_unstorable_input.py), a rule the document does
# not spell out in each string's schema.
schema.config.generation.allow_x00 = False
schema.config.checks.positive_data_acceptance.expected_statuses = [
    *schema.config.checks.positive_data_acceptance.expected_statuses, "400", "415",
]


@pytest.fixture(scope="module")
def fuzzed_app(database, idp, kek_dir) -> Iterator[AppUnderTest]:
    APP.app = create_app(settings_for(database, idp, kek_dir=kek_dir))  # credentials can be stored
    with TestClient(APP.app):
        yield APP
    APP.app = None


def _ids_into(case: schemathesis.Case, world: World) -> None:
    """Aim the case at `world`: its tenant and first workspace, when the generated id is a valid one
    (invalid ids stay, so the 422 for them is fuzzed too); a fresh Idempotency-Key."""
    wanted = {"tenant_id": str(world.tenant_id), "workspace_id": str(world.workspaces[0])}
    for name, value in wanted.items():
        generated = (case.path_parameters or {}).get(name)
        if generated is None:
            continue
        try:
            uuid.UUID(str(generated))
        except ValueError:
            continue
        case.path_parameters[name] = value
    # A valid Idempotency-Key is made unique: a key reused for another request is a 422 by design
    # (tests/edge/test_idempotency.py), not something a schema can say. Invalid keys stay.
    key = (case.headers or {}).get("Idempotency-Key")
    if key is not None and 16 <= len(key) <= 255 and all(0x21 <= ord(c) <= 0x7E for c in key):
        case.headers["Idempotency-Key"] = str(uuid.uuid4())


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_conforms(case: schemathesis.Case, fuzzed_app, world: World) -> None:
    """Inside the caller's own tenant and workspace: every answer is declared and no answer is a 5xx."""
    _ids_into(case, world)
    case.call_and_validate(headers={"Authorization": f"Bearer {world.admin.token}"})


@pytest.fixture(scope="module")
def prober(client, idp, vendor) -> World:
    return make_world(client, idp, vendor)


@pytest.fixture(scope="module")
def probed(client, idp, vendor) -> World:
    return make_world(client, idp, vendor)


@schema.include(path_regex=r"\{tenant_id\}").parametrize()
@FUZZ_SETTINGS
def test_another_tenants_ids_answer_nothing(case: schemathesis.Case, fuzzed_app, prober: World, probed: World) -> None:
    """Another tenant's real tenant and workspace ids, with this tenant's customer_admin's token: never 2xx
    (nothing there changes, so both tenants serve every operation)."""
    _ids_into(case, probed)
    response = case.call_and_validate(headers={"Authorization": f"Bearer {prober.admin.token}"})
    if case.path_parameters["tenant_id"] == str(probed.tenant_id):
        assert not 200 <= response.status_code < 300, (case.method, case.formatted_path, response.status_code)


def test_stateful_sequences_conform(fuzzed_app, world: World) -> None:
    """Chains of calls (what one answers, such as a new document's id, feeds the next): the same checks."""
    authorization = {"Authorization": f"Bearer {world.admin.token}"}

    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            _ids_into(case, world)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": authorization}

    Sequences.run(settings=hypothesis.settings(FUZZ_SETTINGS, max_examples=STATEFUL_EXAMPLES,
                                               stateful_step_count=STATEFUL_STEPS))
