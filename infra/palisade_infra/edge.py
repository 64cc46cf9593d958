"""Edge (Cloudflare): the tunnel that is the only way in to the API, TLS 1.3 for the app's host
name, the WAF (managed rulesets, custom rules, rate limit), a redirect to HTTPS, a Turnstile widget,
and the app's DNS record.

Origin: a Cloudflare Tunnel, managed remotely (`configSrc: cloudflare`). The API has no public
ingress at all; a cloudflared sidecar in each replica dials out to Cloudflare with the tunnel's
token and forwards this host name, and nothing else, to the API on loopback. Only this zone's
proxied record points at the tunnel, so every request passes this zone's WAF, rate limit and
challenges; another Cloudflare account cannot route to a tunnel it does not own (unlike an
allow-list of Cloudflare's IP ranges, which any Worker passes). Authenticated origin pulls would
need a public ingress and a client-certificate check in the app; the tunnel needs neither.

Scope: every rule matches the app's host name only. The rulesets are zone entry-point rulesets
(one per phase per zone), so this program owns the phases it declares
(`http_request_firewall_managed`, `http_request_firewall_custom`, `http_ratelimit`,
`http_request_dynamic_redirect`): rules other hosts of the zone had in those phases are replaced.
Use a zone of its own for the appliance (a delegated subdomain zone works) if the customer's main
zone has rules there. Zone-wide settings are set only with `manageZoneSettings`.
Managed rulesets and rate-limit periods of 60 seconds need a Pro plan or higher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare

from . import defaults
from .options import children_of
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
    port: int
    blocked_countries: Sequence[str] = ()
    blocked_asns: Sequence[int] = ()
    challenge_paths: Sequence[str] = ()
    api_path_prefix: str = "/api/"
    rate_limit_per_minute: int = 100
    manage_zone_settings: bool = False
    hsts_max_age_seconds: int = 31_536_000
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False


class Edge(pulumi.ComponentResource):
    turnstile_site_key: pulumi.Output[str]
    tunnel_cname: pulumi.Output[str]
    turnstile_secret_name: str = defaults.TURNSTILE_SECRET
    tunnel_token_secret_name: str = defaults.TUNNEL_TOKEN

    def __init__(self, name: str, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Edge", name, None, opts)
        child = children_of(self, opts)
        host = f'(http.host eq "{args.domain}")'

        def ruleset(label: str, title: str, description: str, phase: str, rules: list) -> None:
            """This zone's entry-point ruleset for `phase` (one per phase per zone: this program owns it)."""
            cloudflare.Ruleset(f"{name}-{label}", zone_id=args.zone_id, kind="zone", name=title, description=description,
                               phase=phase, rules=rules, opts=child)

        # --- transport: TLS 1.3 minimum for this host name (the rest of the zone is untouched).
        cloudflare.HostnameTlsSetting(
            f"{name}-min-tls", zone_id=args.zone_id, setting_id="min_tls_version", hostname=args.domain, value="1.3",
            opts=child,
        )
        if args.manage_zone_settings:
            zone_settings: dict[str, object] = {
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
            for setting_id, value in zone_settings.items():
                cloudflare.ZoneSetting(
                    f"{name}-{setting_id.replace('_', '-')}", zone_id=args.zone_id, setting_id=setting_id, value=value,
                    opts=child,
                )

        # Plain HTTP to this host name is redirected before it reaches the tunnel (the app then
        # sends HSTS itself, so browsers stop trying).
        ruleset("https-redirect", "palisade https redirect", f"http://{args.domain} -> https",
                "http_request_dynamic_redirect", [
                cloudflare.RulesetRuleArgs(
                    action="redirect",
                    expression=f"{host} and not ssl",
                    description="redirect to https",
                    enabled=True,
                    action_parameters=cloudflare.RulesetRuleActionParametersArgs(
                        from_value=cloudflare.RulesetRuleActionParametersFromValueArgs(
                            status_code=308,
                            preserve_query_string=True,
                            target_url=cloudflare.RulesetRuleActionParametersFromValueTargetUrlArgs(
                                expression=f'concat("https://{args.domain}", http.request.uri.path)'
                            ),
                        )
                    ),
                )
            ])

        # --- WAF: Cloudflare Managed and OWASP Core for this host, blocking at the default threshold.
        ruleset("waf-managed", "palisade managed WAF",
                f"Cloudflare Managed Ruleset and OWASP Core Ruleset for {args.domain}", "http_request_firewall_managed", [
                cloudflare.RulesetRuleArgs(
                    action="execute",
                    expression=host,
                    description="Cloudflare Managed Ruleset",
                    enabled=True,
                    action_parameters=cloudflare.RulesetRuleActionParametersArgs(id=defaults.CLOUDFLARE_MANAGED_RULESET),
                ),
                cloudflare.RulesetRuleArgs(
                    action="execute",
                    expression=host,
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
            ])

        custom_rules = []
        if args.blocked_countries:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="block", description="blocked countries", enabled=True,
                expression=f"{host} and (ip.src.country in {_set(sorted(args.blocked_countries))})",
            ))
        if args.blocked_asns:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="block", description="blocked networks (ASN)", enabled=True,
                expression=f"{host} and (ip.src.asnum in {_set(sorted(args.blocked_asns))})",
            ))
        if args.challenge_paths:
            custom_rules.append(cloudflare.RulesetRuleArgs(
                action="managed_challenge", description="challenge on sensitive paths", enabled=True,
                expression=f"{host} and (http.request.uri.path in {_set(list(args.challenge_paths))})",
            ))
        if custom_rules:
            ruleset("waf-custom", "palisade custom rules",
                    f"country and network blocks, challenges on sensitive paths of {args.domain}",
                    "http_request_firewall_custom", custom_rules)

        ruleset("rate-limit", "palisade rate limits",
                f"{args.rate_limit_per_minute} requests per minute per client IP on the API of {args.domain}",
                "http_ratelimit", [
                cloudflare.RulesetRuleArgs(
                    action="block",
                    description="API requests per client IP",
                    enabled=True,
                    expression=f'{host} and (starts_with(http.request.uri.path, "{args.api_path_prefix}"))',
                    ratelimit=cloudflare.RulesetRuleRatelimitArgs(
                        characteristics=["ip.src", "cf.colo.id"],
                        period=60,
                        requests_per_period=args.rate_limit_per_minute,
                        mitigation_timeout=60,
                    ),
                )
            ])

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
                     value=widget.secret, opts=children_of(self, opts))

        # --- the tunnel: this host name to the API on the replica's loopback, anything else 404.
        tunnel = cloudflare.ZeroTrustTunnelCloudflared(
            f"{name}-tunnel", account_id=args.account_id, name=f"{args.prefix}-{args.domain}", config_src="cloudflare",
            opts=child,
        )
        cloudflare.ZeroTrustTunnelCloudflaredConfig(
            f"{name}-tunnel-config",
            account_id=args.account_id,
            tunnel_id=tunnel.id,
            config=cloudflare.ZeroTrustTunnelCloudflaredConfigConfigArgs(
                ingresses=[
                    cloudflare.ZeroTrustTunnelCloudflaredConfigConfigIngressArgs(
                        hostname=args.domain, service=f"http://localhost:{args.port}",
                        # Idle connections to the API end here before the API ends them (defaults.py).
                        origin_request=cloudflare.ZeroTrustTunnelCloudflaredConfigConfigIngressOriginRequestArgs(
                            keep_alive_timeout=defaults.TUNNEL_ORIGIN_KEEP_ALIVE_SECONDS,
                        ),
                    ),
                    cloudflare.ZeroTrustTunnelCloudflaredConfigConfigIngressArgs(service="http_status:404"),
                ]
            ),
            opts=child,
        )
        token = cloudflare.get_zero_trust_tunnel_cloudflared_token_output(
            account_id=args.account_id, tunnel_id=tunnel.id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        store_secret(f"{name}-tunnel-token", vault=args.vault, secret_name=self.tunnel_token_secret_name,
                     value=token.token, opts=children_of(self, opts))

        self.turnstile_site_key = widget.sitekey
        self.tunnel_cname = tunnel.id.apply(lambda tunnel_id: f"{tunnel_id}.cfargotunnel.com")
        self.register_outputs({"turnstile_site_key": self.turnstile_site_key})


@dataclass
class EdgeDnsArgs:
    zone_id: str
    domain: str
    # `<tunnel id>.cfargotunnel.com`: resolvable only through this zone's proxied record.
    tunnel_cname: pulumi.Input[str]


class EdgeDns(pulumi.ComponentResource):
    """The app's proxied record: the host name, through this zone's WAF, to the tunnel."""

    def __init__(self, name: str, args: EdgeDnsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:EdgeDns", name, None, opts)
        cloudflare.DnsRecord(
            f"{name}-app",
            zone_id=args.zone_id,
            name=args.domain,
            type="CNAME",
            content=args.tunnel_cname,
            proxied=True,
            ttl=1,
            comment="Palisade: proxied through the Cloudflare WAF to the tunnel (no public origin)",
            opts=children_of(self, opts),
        )
        self.register_outputs({})
