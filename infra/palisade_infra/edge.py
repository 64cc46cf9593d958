"""Edge (Cloudflare): zone TLS settings, the WAF (managed rulesets, custom rules, rate limit), a
Turnstile widget, the origin certificate, and — once the Azure ingress has a name — the DNS records.

The rulesets are zone entry-point rulesets: one per phase per zone, so this program owns each phase
it declares (`http_request_firewall_managed`, `http_request_firewall_custom`, `http_ratelimit`).
Managed rulesets and rate-limit periods of 60 seconds need a Pro plan or higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_tls as tls

from . import defaults
from .vault import VaultRef, store_secret


def _set(values: Sequence[str | int]) -> str:
    """A Cloudflare rules-language set literal: {"a" "b"} or {1 2}."""
    return "{" + " ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "}"


@dataclass
class EdgeArgs:
    prefix: str
    domain: str
    zone_id: str
    account_id: str
    vault: VaultRef
    blocked_countries: Sequence[str] = ()
    blocked_asns: Sequence[int] = ()
    challenge_paths: Sequence[str] = ()
    api_path_prefix: str = "/api/"
    rate_limit_per_minute: int = 100
    hsts_max_age_seconds: int = 31_536_000
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False
    origin_cert_validity_days: int = 365


class Edge(pulumi.ComponentResource):
    turnstile_site_key: pulumi.Output[str]
    turnstile_secret_name: str = defaults.TURNSTILE_SECRET
    origin_tls_secret_name: str = defaults.ORIGIN_TLS

    def __init__(self, name: str, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Edge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # --- transport: TLS 1.3 on, nothing below 1.2, HTTPS only, strict origin validation.
        settings: dict[str, object] = {
            "ssl": "strict",
            "min_tls_version": "1.2",
            "tls_1_3": "on",
            "always_use_https": "on",
            "automatic_https_rewrites": "on",
            # 0-RTT data can be replayed; the API has non-idempotent POSTs.
            "0rtt": "off",
            "security_header": {
                "strict_transport_security": {
                    "enabled": True,
                    "max_age": args.hsts_max_age_seconds,
                    "include_subdomains": args.hsts_include_subdomains,
                    "preload": args.hsts_preload,
                    "nosniff": True,
                }
            },
        }
        for setting_id, value in settings.items():
            cloudflare.ZoneSetting(
                f"{name}-{setting_id.replace('_', '-')}", zone_id=args.zone_id, setting_id=setting_id, value=value, opts=child
            )

        # --- WAF: Cloudflare Managed and OWASP Core, blocking at the default anomaly threshold.
        cloudflare.Ruleset(
            f"{name}-waf-managed",
            zone_id=args.zone_id,
            kind="zone",
            name="palisade managed WAF",
            description="Cloudflare Managed Ruleset and OWASP Core Ruleset",
            phase="http_request_firewall_managed",
            rules=[
                cloudflare.RulesetRuleArgs(
                    action="execute",
                    expression="true",
                    description="Cloudflare Managed Ruleset",
                    enabled=True,
                    action_parameters=cloudflare.RulesetRuleActionParametersArgs(id=defaults.CLOUDFLARE_MANAGED_RULESET),
                ),
                cloudflare.RulesetRuleArgs(
                    action="execute",
                    expression="true",
                    description="OWASP Core Ruleset",
                    enabled=True,
                    action_parameters=cloudflare.RulesetRuleActionParametersArgs(
                        id=defaults.CLOUDFLARE_OWASP_RULESET,
                        overrides=cloudflare.RulesetRuleActionParametersOverridesArgs(
                            rules=[
                                cloudflare.RulesetRuleActionParametersOverridesRuleArgs(
                                    id=defaults.OWASP_ANOMALY_SCORE_RULE, action="block", score_threshold=40, enabled=True
                                )
                            ]
                        ),
                    ),
                ),
            ],
            opts=child,
        )

        custom_rules = []
        if args.blocked_countries:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="block", description="blocked countries", enabled=True,
                expression=f"(ip.src.country in {_set(sorted(args.blocked_countries))})",
            ))
        if args.blocked_asns:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="block", description="blocked networks (ASN)", enabled=True,
                expression=f"(ip.src.asnum in {_set(sorted(args.blocked_asns))})",
            ))
        if args.challenge_paths:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="managed_challenge", description="challenge on sensitive paths", enabled=True,
                expression=f"(http.request.uri.path in {_set(list(args.challenge_paths))})",
            ))
        if custom_rules:
            cloudflare.Ruleset(
                f"{name}-waf-custom",
                zone_id=args.zone_id,
                kind="zone",
                name="palisade custom rules",
                description="country and network blocks, challenges on sensitive paths",
                phase="http_request_firewall_custom",
                rules=custom_rules,
                opts=child,
            )

        cloudflare.Ruleset(
            f"{name}-rate-limit",
            zone_id=args.zone_id,
            kind="zone",
            name="palisade rate limits",
            description=f"{args.rate_limit_per_minute} requests per minute per client IP on the API",
            phase="http_ratelimit",
            rules=[
                cloudflare.RulesetRuleArgs(
                    action="block",
                    description="API requests per client IP",
                    enabled=True,
                    expression=f'(starts_with(http.request.uri.path, "{args.api_path_prefix}"))',
                    ratelimit=cloudflare.RulesetRuleRatelimitArgs(
                        characteristics=["ip.src", "cf.colo.id"],
                        period=60,
                        requests_per_period=args.rate_limit_per_minute,
                        mitigation_timeout=60,
                    ),
                )
            ],
            opts=child,
        )

        # --- Turnstile: the site key is public, the secret goes to the vault only.
        widget = cloudflare.TurnstileWidget(
            f"{name}-turnstile",
            account_id=args.account_id,
            name=f"{args.prefix} {args.domain}",
            domains=[args.domain],
            mode="managed",
            region="world",
            opts=child,
        )
        store_secret(f"{name}-turnstile-secret", vault=args.vault, secret_name=self.turnstile_secret_name,
                     value=widget.secret, parent=self)

        # --- origin certificate for SSL "full (strict)": key and CSR made here, signed by the
        # Cloudflare Origin CA, stored (certificate then key, PEM) in the vault for the ingress.
        origin_key = tls.PrivateKey(f"{name}-origin-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        csr = tls.CertRequest(
            f"{name}-origin-csr",
            private_key_pem=origin_key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=args.domain, organization="Palisade"),
            dns_names=[args.domain],
            opts=child,
        )
        origin_cert = cloudflare.OriginCaCertificate(
            f"{name}-origin-cert",
            csr=csr.cert_request_pem,
            hostnames=[args.domain],
            request_type="origin-ecc",
            requested_validity=args.origin_cert_validity_days,
            opts=child,
        )
        pem = pulumi.Output.all(origin_cert.certificate, origin_key.private_key_pem).apply(
            lambda v: v[0].rstrip("\n") + "\n" + v[1]
        )
        store_secret(f"{name}-origin-tls", vault=args.vault, secret_name=self.origin_tls_secret_name, value=pem,
                     parent=self, content_type="application/x-pem-file")

        self.turnstile_site_key = widget.sitekey
        self.register_outputs({"turnstile_site_key": self.turnstile_site_key})


@dataclass
class EdgeDnsArgs:
    zone_id: str
    domain: str
    # The app's default Azure name (<app>.<environment default domain>), known before the app exists.
    origin_fqdn: pulumi.Input[str]
    # The environment's custom-domain verification id (the asuid TXT record Azure checks).
    verification_id: pulumi.Input[str]


class EdgeDns(pulumi.ComponentResource):
    """The proxied record for the app and Azure's ownership record, declared before the binding."""

    def __init__(self, name: str, args: EdgeDnsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:EdgeDns", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cloudflare.DnsRecord(
            f"{name}-app",
            zone_id=args.zone_id,
            name=args.domain,
            type="CNAME",
            content=args.origin_fqdn,
            proxied=True,
            ttl=1,
            comment="Palisade: proxied through the Cloudflare WAF to Azure Container Apps",
            opts=child,
        )
        cloudflare.DnsRecord(
            f"{name}-asuid",
            zone_id=args.zone_id,
            name=f"asuid.{args.domain}",
            type="TXT",
            content=args.verification_id,
            proxied=False,
            ttl=3600,
            comment="Palisade: Azure Container Apps custom-domain ownership",
            opts=child,
        )
        self.register_outputs({})
