"""Stack configuration: validated before anything is declared, every problem named with its key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from infra_harness import REPO, PalisadeMocks, example_stack_config, project_defaults, run_program
from palisade_infra import config as stack_config
from palisade_infra import defaults


def raw(**overrides):
    """The example stack's palisade: values (namespace stripped) with overrides; None removes a key."""
    values = {k.split(":", 1)[1]: v for k, v in {**project_defaults(), **example_stack_config()}.items()
              if k.startswith("palisade:")}
    for key, value in overrides.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    for key in stack_config.SECRET_KEYS:
        values.pop(key, None)
    return values


def problems(**overrides) -> str:
    with pytest.raises(stack_config.ConfigError) as excinfo:
        stack_config.parse(raw(**overrides))
    return str(excinfo.value)


class TestPreviewFailsFast:
    """A bad stack fails `pulumi preview` before a single resource is planned."""

    @pytest.mark.parametrize(
        ("override", "message"),
        [
            ({"palisade:location": "westeurop"}, "palisade:location 'westeurop' is not an Azure region name"),
            ({"palisade:domain": ""}, "palisade:domain is required"),
            ({"palisade:addressSpace": "8.8.0.0/16"}, "palisade:addressSpace 8.8.0.0/16 is not a private (RFC 1918) IPv4 range"),
        ],
        ids=["bad-region", "missing-domain", "public-address-space"],
    )
    def test_bad_config_stops_the_preview(self, override, message):
        mocks = PalisadeMocks()
        with pytest.raises(stack_config.ConfigError) as excinfo:
            run_program({**example_stack_config(), **override}, preview=True, mocks=mocks)
        assert message in str(excinfo.value)
        assert mocks.resources == [], "nothing may be planned for an invalid stack"


class TestValidation:
    def test_the_example_stack_is_valid(self):
        cfg = stack_config.parse(raw())
        assert cfg.location == "westeurope" and cfg.domain == "palisade.example.com"
        assert (cfg.apps_subnet, cfg.database_subnet, cfg.endpoints_subnet) == ("10.42.0.0/23", "10.42.2.0/24", "10.42.3.0/24")

    def test_every_problem_is_reported_at_once(self):
        message = problems(location="mars", addressSpace="100.64.0.0/16", minReplicas="1")
        assert message.count("\n  - ") == 3

    def test_missing_required_keys_are_named_with_a_hint(self):
        message = problems(domain=None, image=None, issuers=None)
        assert "palisade:domain is required: the public hostname" in message
        assert "palisade:image is required" in message
        assert "palisade:issuers is required" in message

    @pytest.mark.parametrize("space", ["10.0.0.0/23", "10.1.0.0/8x", "172.32.0.0/16", "fd00::/48"])
    def test_address_space_must_be_private_ipv4_and_large_enough(self, space):
        assert "palisade:addressSpace" in problems(addressSpace=space)

    @pytest.mark.parametrize("domain", ["https://palisade.example.com", "Palisade.example.com", "*.example.com", "localhost"])
    def test_domain_must_be_a_plain_dns_name(self, domain):
        assert "palisade:domain" in problems(domain=domain)

    def test_a_misspelt_key_is_refused_rather_than_ignored(self):
        assert "palisade:minReplica is not a known key" in problems(minReplica="3")

    def test_secure_floors_cannot_be_lowered(self):
        assert "palisade:minReplicas must be at least 2" in problems(minReplicas="1")
        assert "palisade:postgresVersion must be one of 16, 17, 18" in problems(postgresVersion="15")
        assert "palisade:postgresMinTls must be TLSv1.3" in problems(postgresMinTls="TLSv1.2")
        assert "palisade:hstsMaxAgeSeconds" in problems(hstsMaxAgeSeconds="86400")
        assert "palisade:softDeleteRetentionDays" in problems(softDeleteRetentionDays="3")

    def test_high_availability_on_burstable_needs_an_explicit_choice(self):
        assert "postgresHighAvailability needs the GeneralPurpose" in problems(postgresTier="Burstable")
        stack_config.parse(raw(postgresTier="Burstable", postgresHighAvailability="Disabled"))

    def test_the_image_is_pinned_by_digest_unless_deliberately_not(self):
        assert "must be pinned by digest" in problems(image="ghcr.io/example/palisade:latest")
        stack_config.parse(raw(image="ghcr.io/example/palisade:1.2.3", allowMutableImageTag="true"))

    def test_the_vendor_issuer_reaches_the_app_marked(self):
        cfg = stack_config.parse(raw(issuers='[{"issuer": "https://sso.vendor.example", "audience": "a", "vendor": true, '
                                             '"vendorClaim": "groups", "vendorClaimValue": "support"}]'))
        assert cfg.issuers[0].to_app() == {"issuer": "https://sso.vendor.example", "audience": "a",
                                           "roles_claim": "realm_access.roles", "vendor": True,
                                           "vendor_claim": "groups", "vendor_claim_value": "support"}
        assert "vendorClaim and vendorClaimValue go together" in problems(
            issuers='[{"issuer": "https://sso.example", "audience": "a", "vendorClaim": "groups", "vendorClaimValue": "x"}]')
        assert "vendor must be true or false" in problems(issuers='[{"issuer": "https://sso.example", "audience": "a", '
                                                                  '"vendor": "yes"}]')

    def test_issuers_must_be_https(self):
        assert "must use https" in problems(issuers='[{"issuer": "http://idp.local", "audience": "a"}]')

    def test_the_app_role_is_no_reserved_name(self):
        assert "reserved by Azure" in problems(appRole="azure_pg_admin")
        assert "adminRole is not a known key" in problems(adminRole="palisade_admin")

    def test_zone_wide_hsts_needs_the_zone_settings_opt_in(self):
        # includeSubDomains at the edge would force HTTPS on every host of the customer's zone.
        assert "manageZoneSettings" in problems(hstsIncludeSubdomains=True)
        assert "manageZoneSettings" in problems(hstsPreload=True, hstsIncludeSubdomains=True)
        stack_config.parse(raw(hstsIncludeSubdomains=True, manageZoneSettings=True))

    def test_edge_lists_are_checked(self):
        assert "blockedCountries entry 'Korea'" in problems(blockedCountries='["Korea"]')
        assert "path 'api'" in problems(challengePaths='["api"]')


class TestPulumiYaml:
    """Pulumi.yaml documents every key the program reads, with the program's own defaults."""

    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())

    def test_every_key_is_declared_and_nothing_else(self):
        declared = {k.split(":", 1)[1] for k in self.project["config"]}
        assert declared == set(stack_config.KEYS) | set(stack_config.SECRET_KEYS)

    def test_secret_keys_are_marked_secret(self):
        for key in stack_config.SECRET_KEYS:
            assert self.project["config"][f"palisade:{key}"].get("secret") is True
        assert defaults.SECRET_CONFIG_KEYS.keys() == set(stack_config.SECRET_KEYS)

    def test_required_keys_have_no_default(self):
        for key in stack_config.REQUIRED:
            assert "default" not in self.project["config"][f"palisade:{key}"]

    def test_declared_defaults_are_the_program_defaults(self):
        from_yaml = stack_config.parse(raw())
        cfg_defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                        for f in dataclasses.fields(stack_config.StackConfig) if f.default is not dataclasses.MISSING
                        or f.default_factory is not dataclasses.MISSING}
        overridden = {stack_config.KEYS[k.split(":", 1)[1]][0] for k in example_stack_config()}
        for name, default in cfg_defaults.items():
            if name not in overridden:
                assert getattr(from_yaml, name) == default, name

    def test_runtime_uses_the_infra_virtualenv(self):
        assert self.project["runtime"]["options"]["virtualenv"] == ".venv-infra"
        assert self.project["main"] == "infra/"
