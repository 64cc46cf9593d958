"""Provider credentials over HTTP: only last four and a fingerprint ever come back, admins only,
another tenant's credential is indistinguishable from none, and every change is audited."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from app.crypto import datakeys
from tests.credentials.helpers import Api, new_secret, reveal, rows
from tests.support.api import person

READ_FIELDS = {"id", "provider", "label", "kind", "last4", "fingerprint", "created_at", "updated_at"}


def cid() -> str:
    return f"cred-{uuid.uuid4().hex}"


class TestRoundTrip:
    def test_add_list_get_replace_delete(self, api: Api, sessions, superuser):
        secret, replacement = new_secret(), new_secret()
        correlation = {"create": cid(), "replace": cid(), "delete": cid()}
        seen: list[str] = []

        r = api.admin.post(api.url(), json={"provider": "anthropic", "label": "  Prod key  ", "kind": "api_key", "secret": secret},
                           headers={"X-Correlation-ID": correlation["create"]})
        assert r.status_code == 201, r.text
        seen.append(r.text)
        created = r.json()
        assert set(created) == READ_FIELDS
        assert created["provider"] == "anthropic" and created["label"] == "Prod key" and created["kind"] == "api_key"
        assert created["last4"] == secret[-4:]
        assert len(created["fingerprint"]) == 16 and int(created["fingerprint"], 16) >= 0

        listed = api.admin.get(api.url())
        assert listed.status_code == 200
        seen.append(listed.text)
        assert [c["id"] for c in listed.json()["items"]] == [created["id"]]
        one = api.admin.get(api.url(0, created["id"]))
        assert one.status_code == 200 and one.json() == created
        seen.append(one.text)

        # Decrypted only at use, by the service.
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"]) == secret

        r = api.admin.put(api.url(0, created["id"]), json={"secret": replacement}, headers={"X-Correlation-ID": correlation["replace"]})
        assert r.status_code == 200, r.text
        seen.append(r.text)
        replaced = r.json()
        assert replaced["last4"] == replacement[-4:]
        assert replaced["fingerprint"] != created["fingerprint"]
        assert replaced["label"] == "Prod key" and replaced["created_at"] == created["created_at"]
        assert replaced["updated_at"] > created["updated_at"]
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"]) == replacement

        r = api.admin.delete(api.url(0, created["id"]), headers={"X-Correlation-ID": correlation["delete"]})
        assert r.status_code == 204
        assert api.admin.get(api.url(0, created["id"])).status_code == 404

        for text in seen:
            assert secret not in text and replacement not in text

        events = {}
        for step, correlation_id in correlation.items():
            found = rows(superuser, "select * from audit_events where tenant_id = :t and correlation_id = :c",
                         t=api.world.tenant_id, c=correlation_id)
            assert len(found) == 1, found
            events[step] = found[0]
            assert secret not in repr(found[0]) and replacement not in repr(found[0])
        assert {e["category"] for e in events.values()} == {"secret_change"}
        assert [events[s]["action"] for s in ("create", "replace", "delete")] == ["credential.create", "credential.replace", "credential.delete"]
        assert events["create"]["target_id"] == created["id"]
        assert events["create"]["workspace_id"] == api.world.workspaces[0]
        assert events["create"]["details"]["fingerprint"] == created["fingerprint"]
        assert events["replace"]["details"] == {"provider": "anthropic", "previous_fingerprint": created["fingerprint"],
                                                "fingerprint": replaced["fingerprint"]}

    def test_stored_only_as_ciphertext(self, api: Api, superuser):
        secret = new_secret()
        created = api.add(secret=secret)
        [row] = rows(superuser, "select * from provider_credentials where tenant_id = :t and id = :i", t=api.world.tenant_id, i=created["id"])
        assert secret.encode() not in bytes(row["ciphertext"])
        assert row["ciphertext"][0] == 1 and row["dek_version"] >= 1
        assert row["created_by"] == api.world.user_ids[api.world.admin.subject]

    def test_short_secret_shows_no_last4(self, api: Api):
        assert api.add(secret="Sh0rt-k3y")["last4"] is None

    def test_oauth_token_kind(self, api: Api):
        r = api.admin.post(api.url(), json={"provider": "google", "label": "oauth", "kind": "oauth_token", "secret": new_secret()})
        assert r.status_code == 201 and r.json()["kind"] == "oauth_token"


class TestFingerprint:
    def test_same_secret_same_fingerprint_within_a_tenant_other_across_tenants(self, api: Api, other_api: Api):
        secret = new_secret()
        a, b = api.add(0, secret=secret), api.add(1, secret=secret)
        elsewhere = other_api.add(0, secret=secret)
        assert a["fingerprint"] == b["fingerprint"]
        assert elsewhere["fingerprint"] != a["fingerprint"]
        # Keyed: not a plain hash of the secret anyone holding a guess could compute.
        plain = hashlib.sha256(secret.encode()).hexdigest()
        assert a["fingerprint"] not in (plain[:16], plain[-16:])


class TestWhoMay:
    @pytest.mark.parametrize("role", ["member", "viewer", "multi_account_manager"])
    def test_below_admin_is_forbidden_everywhere(self, api: Api, role: str):
        created = api.add()
        someone = api.as_(api.world.join(workspace=0, role=role))
        attempts = [
            someone.get(api.url()),
            someone.get(api.url(0, created["id"])),
            someone.post(api.url(), json={"provider": "openai", "label": "mine", "secret": new_secret()}),
            someone.put(api.url(0, created["id"]), json={"secret": new_secret()}),
            someone.delete(api.url(0, created["id"])),
        ]
        assert [r.status_code for r in attempts] == [403] * 5
        assert api.admin.get(api.url(0, created["id"])).status_code == 200  # nothing changed

    @pytest.mark.parametrize("role", ["admin", "owner"])
    def test_workspace_admins_may(self, api: Api, role: str):
        admin = api.as_(api.world.join(workspace=0, role=role))
        created = api.add(caller=admin)
        assert admin.put(api.url(0, created["id"]), json={"secret": new_secret()}).status_code == 200
        assert admin.delete(api.url(0, created["id"])).status_code == 204

    def test_customer_admin_without_workspace_role_may(self, api: Api):
        tenant_admin = api.as_(api.world.join(tenant_role="customer_admin"))
        created = api.add(caller=tenant_admin)
        assert tenant_admin.get(api.url()).status_code == 200
        assert created["id"] in [c["id"] for c in tenant_admin.get(api.url()).json()["items"]]

    def test_admin_of_another_workspace_sees_no_workspace(self, api: Api):
        other_admin = api.as_(api.world.join(workspace=1, role="admin"))
        assert other_admin.get(api.url(0)).status_code == 404

    def test_without_token(self, api: Api):
        assert api.client.get(api.url()).status_code == 401

    def test_stranger(self, api: Api):
        stranger = api.as_(person(api.world.client, api.world.idp))
        assert stranger.get(api.url()).status_code == 404


class TestNotFoundLooksTheSame:
    def test_other_tenants_credential_is_like_a_random_id(self, api: Api, other_api: Api):
        theirs = other_api.add()
        by_their_id = [
            api.admin.get(api.url(0, theirs["id"])),
            api.admin.put(api.url(0, theirs["id"]), json={"secret": new_secret()}),
            api.admin.delete(api.url(0, theirs["id"])),
        ]
        random_id = uuid.uuid4()
        by_random = [
            api.admin.get(api.url(0, random_id)),
            api.admin.put(api.url(0, random_id), json={"secret": new_secret()}),
            api.admin.delete(api.url(0, random_id)),
        ]
        assert [r.status_code for r in by_their_id] == [404, 404, 404]
        assert [r.json() for r in by_their_id] == [r.json() for r in by_random]
        assert other_api.admin.get(other_api.url(0, theirs["id"])).status_code == 200  # untouched

    def test_other_workspaces_credential(self, api: Api):
        in_b = api.add(1)
        assert api.admin.get(api.url(0, in_b["id"])).status_code == 404
        assert api.admin.delete(api.url(0, in_b["id"])).status_code == 404
        assert api.admin.get(api.url(1, in_b["id"])).status_code == 200

    def test_other_tenants_path(self, api: Api, other_api: Api):
        theirs = other_api.add()
        r = api.admin.get(other_api.url(0, theirs["id"]))
        assert r.status_code == 404


class TestValidation:
    def test_too_long_secret_is_not_echoed(self, api: Api):
        secret = new_secret() * 500
        r = api.admin.post(api.url(), json={"provider": "openai", "label": "long", "secret": secret})
        assert r.status_code == 422
        assert secret[:40] not in r.text and secret[-40:] not in r.text
        assert r.json()["errors"][0]["loc"] == ["body", "secret"]

    # NUL is refused by validation (a 422, as for any string PostgreSQL cannot store), other
    # control characters by the credential rules (400).
    @pytest.mark.parametrize(("secret", "status"), [("line\nbreak-0123456789", 400), ("tab\tinside-0123456789", 400),
                                                    ("nul\x00inside-0123456789", 422)])
    def test_control_characters_refused_without_echo(self, api: Api, secret: str, status: int):
        r = api.admin.post(api.url(), json={"provider": "openai", "label": "ctl", "secret": secret})
        assert r.status_code == status, r.text
        assert secret not in r.text and "inside-0123456789" not in r.text

    def test_surrounding_whitespace_is_trimmed(self, api: Api, sessions):
        secret = new_secret()
        created = api.add(secret=f"  {secret}\n")
        assert created["last4"] == secret[-4:]
        assert reveal(sessions, api.world.tenant_id, api.world.workspaces[0], created["id"]) == secret

    def test_label_may_not_hold_the_secret(self, api: Api):
        secret = new_secret()
        r = api.admin.post(api.url(), json={"provider": "openai", "label": f"key {secret}", "secret": secret})
        assert r.status_code == 400 and secret not in r.text

    def test_unknown_provider_and_fields(self, api: Api):
        assert api.admin.post(api.url(), json={"provider": "acme", "label": "x", "secret": new_secret()}).status_code == 422
        r = api.admin.post(api.url(), json={"provider": "openai", "label": "x", "secret": new_secret(), "value": "x"})
        assert r.status_code == 422
        created = api.add()
        assert api.admin.put(api.url(0, created["id"]), json={"secret": new_secret(), "label": "renamed"}).status_code == 422

    def test_duplicate_label_conflicts(self, api: Api):
        api.add(label="Shared")
        r = api.admin.post(api.url(), json={"provider": "openai", "label": "Shared", "secret": new_secret()})
        assert r.status_code == 409
        assert api.add(1, label="Shared")["label"] == "Shared"  # another workspace is another namespace


class TestWithoutKeys:
    def test_no_kek_configured_is_503_and_nothing_stored(self, api: Api):
        keys = datakeys.installed()
        datakeys.install(None)
        try:
            r = api.admin.post(api.url(), json={"provider": "openai", "label": "nokek", "secret": new_secret()})
        finally:
            datakeys.install(keys)
        assert r.status_code == 503
        assert api.admin.get(api.url()).json()["items"] == []
