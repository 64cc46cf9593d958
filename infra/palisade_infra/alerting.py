"""Alerting: what Azure Monitor watches and whom it tells.

- Diagnostic settings: the PostgreSQL server's logs (server log, sessions, query store) and
  metrics go to the Log Analytics workspace in resource-specific tables; the container app's and
  the migration job's platform metrics too. (The vault and the Container Apps environment send
  their own logs: `vault.py`, `hosting.py`.)
- One action group, its receivers from the stack configuration: e-mail addresses and/or one
  webhook (its URL may embed a token, so it stays a Pulumi secret), common alert schema.
- Log alert rules on the workspace, each reading the table its diagnostic setting fills:
  failed PostgreSQL logins, Key Vault requests refused (403), the API's 5xx rate, and every alert
  the app itself fires (its `alert_fired` log lines), so they reach the action group even when the
  app's own webhook is unset or unreachable.
- Metric alert rules on platform metrics that need no log line at all: API replicas restarting,
  a failed migration job execution.
- Microsoft Defender plans, opt-in (`palisade:defenderPlans`): subscription-wide, billed.

The KQL below is plain text: what lands where is written down in `RESOURCE_SPECIFIC_TABLES`
and `CATEGORY_GROUPS`, and tests/infra/test_alerting.py checks every query against the
diagnostic settings actually declared, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native.authorization as authorization
import pulumi_azure_native.monitor as monitor
import pulumi_azure_native.security as security

from .config import DEFENDER_PLANS
from .options import children_of

# ---- published facts (Azure Monitor reference: supported logs per resource type, and the tables
# ---- they land in with `log_analytics_destination_type="Dedicated"`) -------------------------

# Diagnostic log category -> its resource-specific table.
RESOURCE_SPECIFIC_TABLES: Mapping[str, str] = {
    # Microsoft.DBforPostgreSQL/flexibleServers
    "PostgreSQLLogs": "PGSQLServerLogs",
    "PostgreSQLFlexSessions": "PGSQLPgStatActivitySessions",
    "PostgreSQLFlexQueryStoreRuntime": "PGSQLQueryStoreRuntime",
    "PostgreSQLFlexQueryStoreWaitStats": "PGSQLQueryStoreWaits",
    "PostgreSQLFlexTableStats": "PGSQLAutovacuumStats",
    "PostgreSQLFlexDatabaseXacts": "PGSQLDbTransactionsStats",
    "PostgreSQLQueryStoreSqlText": "PGSQLQueryStoreQueryText",
    # Microsoft.KeyVault/vaults
    "AuditEvent": "AZKVAuditLogs",
    "AzurePolicyEvaluationDetails": "AZKVPolicyEvaluationDetailsLogs",
    # Microsoft.App/managedEnvironments
    "ContainerAppConsoleLogs": "ContainerAppConsoleLogs",
    "ContainerAppSystemLogs": "ContainerAppSystemLogs",
}
# The categories of the `allLogs` group that this program relies on, per resource type (lower
# case, as ARM ids compare).
CATEGORY_GROUPS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("microsoft.keyvault/vaults", "allLogs"): ("AuditEvent", "AzurePolicyEvaluationDetails"),
    ("microsoft.app/managedenvironments", "allLogs"): ("ContainerAppConsoleLogs", "ContainerAppSystemLogs"),
    ("microsoft.dbforpostgresql/flexibleservers", "allLogs"): (
        "PostgreSQLLogs", "PostgreSQLFlexSessions", "PostgreSQLFlexQueryStoreRuntime",
        "PostgreSQLFlexQueryStoreWaitStats", "PostgreSQLFlexTableStats", "PostgreSQLFlexDatabaseXacts",
        "PostgreSQLQueryStoreSqlText",
    ),
}

# What the PostgreSQL server sends. Not `allLogs`: PostgreSQLQueryStoreSqlText carries statement
# texts (literals included) out of the database into a workspace with its own readers. Sessions
# and the query store fill only once `metrics.collector_database_activity` and
# `pg_qs.query_capture_mode` are switched on (server parameters); until then they cost nothing.
POSTGRES_LOG_CATEGORIES = (
    "PostgreSQLLogs",
    "PostgreSQLFlexSessions",
    "PostgreSQLFlexQueryStoreRuntime",
    "PostgreSQLFlexQueryStoreWaitStats",
)

# The app's alert severities (`app.alerts.rules.Rule.severity`) -> Azure Monitor severity
# (0 critical, 1 error, 2 warning, 3 informational, 4 verbose).
APP_SEVERITIES: Mapping[str, int] = {"critical": 1, "warning": 2, "info": 3}
# What the app's alert engine logs when a rule fires (`app.alerts.engine`), one JSON line each.
APP_ALERT_EVENT = "alert_fired"
APP_ALERT_LOGGER = "palisade.alerts"
# The API container's name in the container app (`hosting.py`).
API_CONTAINER = "api"


def _kql_string(value: str) -> str:
    """A KQL string literal (JSON escaping is valid KQL escaping for these ids)."""
    return json.dumps(value)


def failed_logins_query(server_id: str) -> str:
    # log_connections is on (database.py): each refused login is a FATAL line in the server log.
    return "\n".join([
        "PGSQLServerLogs",
        f"| where _ResourceId =~ {_kql_string(server_id)}",
        # "password authentication failed for user ...", "Microsoft Entra ID authentication failed
        # ...", "no pg_hba.conf entry for host ..., user ...": FATAL lines, one per refused login.
        '| where Message contains "authentication failed" or Message contains "no pg_hba.conf entry"',
        """| extend Role = extract(@'user "([^"]+)"', 1, Message)""",
        "| project TimeGenerated, Role, Message",
    ])


def vault_denied_query(vault_id: str) -> str:
    # 403 only: a 401 is the normal first leg of every Key Vault client's challenge-based sign-in.
    # AZKVAuditLogs is where AuditEvent lands with resource-specific tables; the AzureDiagnostics
    # branch covers clouds and vaults where it still lands in the legacy table (isfuzzy: a table
    # that does not exist yet is skipped, not an error).
    vault = _kql_string(vault_id)
    return "\n".join([
        "union isfuzzy=true",
        "    (AZKVAuditLogs",
        f"        | where _ResourceId =~ {vault} and HttpStatusCode == 403",
        "        | project TimeGenerated, OperationName, CallerIpAddress, ResultSignature, Id),",
        "    (AzureDiagnostics",
        f'        | where ResourceProvider == "MICROSOFT.KEYVAULT" and Category == "AuditEvent" and _ResourceId =~ {vault}',
        '        | where toint(column_ifexists("httpStatusCode_d", 0)) == 403',
        '        | project TimeGenerated, OperationName, CallerIpAddress = tostring(column_ifexists("CallerIPAddress", "")),',
        '            ResultSignature, Id = tostring(column_ifexists("id_s", "")))',
    ])


# The API's 5xx alert: above this share of responses, with at least this many in the window.
SERVER_ERROR_PERCENT = 5
SERVER_ERROR_MIN_REQUESTS = 20


def server_error_rate_query(app_name: str) -> str:
    # From the app server's own access lines (uvicorn.access, JSON, one per response, status last):
    # they see every response whichever way the request came in. The platform's `Requests` metric
    # counts only what passes a Container Apps ingress; the Cloudflare Tunnel sidecar reaches the
    # API on loopback, past it.
    return "\n".join([
        "ContainerAppConsoleLogs",
        f"| where ContainerAppName == {_kql_string(app_name)} and ContainerName == {_kql_string(API_CONTAINER)}",
        '| where Log has "uvicorn.access"',
        "| extend Entry = parse_json(Log)",
        '| where tostring(Entry.logger) == "uvicorn.access"',
        # The line's event is `<client> - "<method> <path> HTTP/<version>" <status>`.
        """| extend Status = toint(extract(@'" ([0-9]{3})$', 1, tostring(Entry.event)))""",
        "| where isnotnull(Status)",
        "| summarize Requests = count(), ServerErrors = countif(Status >= 500)",
        # Below this volume a couple of errors make a meaningless percentage.
        f"| where Requests >= {SERVER_ERROR_MIN_REQUESTS}",
        "| extend ServerErrorPercent = 100.0 * ServerErrors / Requests",
    ])



def app_alerts_query(app_name: str, severity: str) -> str:
    return "\n".join([
        "ContainerAppConsoleLogs",
        f"| where ContainerAppName == {_kql_string(app_name)} and ContainerName == {_kql_string(API_CONTAINER)}",
        f"| where Log has {_kql_string(APP_ALERT_EVENT)}",
        "| extend Entry = parse_json(Log)",
        f"| where tostring(Entry.event) == {_kql_string(APP_ALERT_EVENT)}"
        f" and tostring(Entry.logger) == {_kql_string(APP_ALERT_LOGGER)}",
        f"| where tostring(Entry.severity) == {_kql_string(severity)}",
        '| project TimeGenerated, Rule = tostring(Entry.rule), Key = tostring(Entry.key), Count = toint(Entry["count"])',
    ])


def _name_of(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class AlertingArgs:
    prefix: str
    location: str
    resource_group_name: pulumi.Input[str]
    log_workspace_id: pulumi.Input[str]
    postgres_server_id: pulumi.Input[str]
    vault_id: pulumi.Input[str]
    container_app_id: pulumi.Input[str]
    job_id: pulumi.Input[str]
    alert_emails: Sequence[str] = ()
    # A secret Output (the URL may carry a token); None for no webhook receiver.
    webhook_url: pulumi.Input[str] | None = None
    defender_plans: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


class Alerting(pulumi.ComponentResource):
    action_group_id: pulumi.Output[str] | None
    rule_names: list[str]

    def __init__(self, name: str, args: AlertingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("palisade:infra:Alerting", name, None, opts)
        child = children_of(self, opts)
        tags = dict(args.tags)
        unknown = sorted(set(args.defender_plans) - set(DEFENDER_PLANS))
        if unknown:
            raise ValueError(f"unknown Defender plans {unknown}; known: {', '.join(DEFENDER_PLANS)}")

        # ---- diagnostic settings ---------------------------------------------------------
        monitor.DiagnosticSetting(
            f"{name}-postgres-logs",
            name="logs-to-log-analytics",
            resource_uri=args.postgres_server_id,
            workspace_id=args.log_workspace_id,
            log_analytics_destination_type="Dedicated",
            logs=[monitor.DiagnosticsLogSettingsArgs(category=c, enabled=True) for c in POSTGRES_LOG_CATEGORIES],
            metrics=[monitor.DiagnosticsMetricSettingsArgs(category="AllMetrics", enabled=True)],
            opts=child,
        )
        # The apps' own logs go through the environment's setting; these are their platform
        # metrics (requests, restarts, executions), kept as long as the workspace keeps logs.
        for label, resource_id in (("app", args.container_app_id), ("job", args.job_id)):
            monitor.DiagnosticSetting(
                f"{name}-{label}-metrics",
                name="metrics-to-log-analytics",
                resource_uri=resource_id,
                workspace_id=args.log_workspace_id,
                metrics=[monitor.DiagnosticsMetricSettingsArgs(category="AllMetrics", enabled=True)],
                opts=child,
            )

        # ---- action group ----------------------------------------------------------------
        action_group = None
        if args.alert_emails or args.webhook_url is not None:
            action_group = monitor.ActionGroup(
                f"{name}-action-group",
                resource_group_name=args.resource_group_name,
                action_group_name=f"ag-{args.prefix}",
                # Action groups are a global service; they hold receiver addresses, no data.
                location="global",
                group_short_name=args.prefix[:12],
                enabled=True,
                email_receivers=[
                    monitor.MicrosoftCommonEmailReceiverArgs(name=f"email-{i}", email_address=address,
                                                            use_common_alert_schema=True)
                    for i, address in enumerate(args.alert_emails)
                ],
                webhook_receivers=[
                    monitor.WebhookReceiverArgs(name="webhook", service_uri=pulumi.Output.secret(args.webhook_url),
                                                use_common_alert_schema=True, use_aad_auth=False)
                ] if args.webhook_url is not None else [],
                tags=tags,
                opts=children_of(self, opts, additional_secret_outputs=["webhookReceivers"]),
            )
        else:
            pulumi.log.warn("no alert receivers configured (palisade:alertEmails, palisade:azureMonitorWebhookUrl): "
                            "alerts fire in Azure Monitor but notify nobody", resource=self)
        groups = [action_group.id] if action_group is not None else []

        # ---- log alerts on the workspace -------------------------------------------------
        app_name = pulumi.Output.from_input(args.container_app_id).apply(_name_of)
        self.rule_names = []

        def log_alert(label: str, title: str, description: str, severity: int, query: pulumi.Input[str], *,
                      window: str, every: str, threshold: float, operator: str = "GreaterThanOrEqual",
                      measure: str | None = None, aggregation: str = "Count", split_by: str | None = None,
                      stateful: bool = True) -> monitor.ScheduledQueryRule:
            rule_name = f"{args.prefix}-{label}"
            self.rule_names.append(rule_name)
            return monitor.ScheduledQueryRule(
                f"{name}-{label}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                rule_name=rule_name,
                display_name=title,
                description=description,
                kind="LogAlert",
                severity=severity,
                enabled=True,
                scopes=[args.log_workspace_id],
                evaluation_frequency=every,
                window_size=window,
                criteria=monitor.ScheduledQueryRuleCriteriaArgs(all_of=[monitor.ConditionArgs(
                    query=query,
                    time_aggregation=aggregation,
                    metric_measure_column=measure,
                    operator=operator,
                    threshold=threshold,
                    dimensions=[monitor.DimensionArgs(name=split_by, operator="Include", values=["*"])] if split_by else None,
                    failing_periods=monitor.ConditionFailingPeriodsArgs(
                        number_of_evaluation_periods=1, min_failing_periods_to_alert=1),
                )]),
                # Stateful rules notify once and resolve when the condition clears; the app's own
                # firings are discrete events, each of which should be notified.
                auto_mitigate=stateful,
                actions=monitor.ActionsArgs(action_groups=groups),
                tags=tags,
                opts=child,
            )

        log_alert(
            "postgres-failed-logins", "PostgreSQL: failed logins",
            "Refused logins to the PostgreSQL server (wrong password, no pg_hba entry, rejected Entra token). "
            "Only the app, the migration job and database administrators connect, from inside the VNet: repeated "
            "failures mean a stale credential after a rotation or someone guessing from inside the network.",
            1, pulumi.Output.from_input(args.postgres_server_id).apply(failed_logins_query),
            window="PT15M", every="PT5M", threshold=3,
        )
        log_alert(
            "keyvault-access-denied", "Key Vault: access denied",
            "Requests to the vault refused with 403 (RBAC or network rules). Each identity holds exactly the "
            "secrets and key it needs, so any refusal is an identity reaching for something it was not given, "
            "or a client outside the private endpoint.",
            2, pulumi.Output.from_input(args.vault_id).apply(vault_denied_query),
            window="PT15M", every="PT5M", threshold=1,
        )
        log_alert(
            "api-5xx-rate", "API: server error rate",
            f"More than {SERVER_ERROR_PERCENT}% of the API's responses were 5xx over 15 minutes (at least "
            f"{SERVER_ERROR_MIN_REQUESTS} requests), from the app server's access log lines.",
            2, app_name.apply(server_error_rate_query),
            window="PT15M", every="PT5M", threshold=SERVER_ERROR_PERCENT, operator="GreaterThan",
            measure="ServerErrorPercent", aggregation="Maximum",
        )
        for severity, azure_severity in APP_SEVERITIES.items():
            log_alert(
                f"app-alerts-{severity}", f"Palisade: {severity} alerts",
                f"Every {severity} alert the app fires (its `{APP_ALERT_EVENT}` log lines), one alert per app rule "
                "(dimension Rule); the key and count are in the query results. Delivered here whether or not the "
                "app's own webhook is configured.",
                azure_severity, app_name.apply(lambda n, s=severity: app_alerts_query(n, s)),
                window="PT5M", every="PT5M", threshold=1, split_by="Rule", stateful=False,
            )

        # ---- metric alerts on platform signals -------------------------------------------
        def metric_alert(label: str, description: str, severity: int, scope: pulumi.Input[str], namespace: str,
                         metric: str, dimension: tuple[str, str] | None, threshold: float, *,
                         window: str, every: str) -> monitor.MetricAlert:
            rule_name = f"{args.prefix}-{label}"
            self.rule_names.append(rule_name)
            return monitor.MetricAlert(
                f"{name}-{label}",
                resource_group_name=args.resource_group_name,
                rule_name=rule_name,
                # Metric alert rules on a single resource are global; they hold no data.
                location="global",
                description=description,
                severity=severity,
                enabled=True,
                scopes=[scope],
                target_resource_type=namespace,
                evaluation_frequency=every,
                window_size=window,
                criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                    odata_type="Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
                    all_of=[monitor.MetricCriteriaArgs(
                        criterion_type="StaticThresholdCriterion",
                        name=label,
                        metric_namespace=namespace,
                        metric_name=metric,
                        dimensions=[monitor.MetricDimensionArgs(name=dimension[0], operator="Include",
                                                                values=[dimension[1]])] if dimension else None,
                        operator="GreaterThan",
                        threshold=threshold,
                        time_aggregation="Total",
                    )],
                ),
                auto_mitigate=True,
                actions=[monitor.MetricAlertActionArgs(action_group_id=g) for g in groups],
                tags=tags,
                opts=child,
            )

        metric_alert(
            "api-restarts",
            "API replicas restarted more than 3 times in 15 minutes (crash loop, failing liveness probe, out of "
            "memory). A platform signal: it fires when the app cannot log at all.",
            2, args.container_app_id, "Microsoft.App/containerApps", "RestartCount", None, 3,
            window="PT15M", every="PT5M",
        )
        metric_alert(
            "migration-failed",
            "An execution of the migration job failed: the schema is not at the image's revision and the new "
            "API revision should not take traffic. Its logs are in ContainerAppConsoleLogs.",
            1, args.job_id, "Microsoft.App/jobs", "Executions", ("state", "Failed"), 0,
            window="PT15M", every="PT5M",
        )

        # ---- Microsoft Defender for Cloud (opt-in, subscription-wide) --------------------
        if args.defender_plans:
            client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
            subscription = client.subscription_id.apply(lambda s: f"/subscriptions/{s}")
            for plan in args.defender_plans:
                security.Pricing(
                    f"{name}-defender-{plan}",
                    scope_id=subscription,
                    pricing_name=plan,
                    pricing_tier="Standard",
                    # The plan covers every resource of its kind in the subscription, not only this
                    # stack's: removing it from the list (or destroying the stack) leaves it on,
                    # so turning Defender off stays a decision made in Defender for Cloud.
                    opts=children_of(self, opts, retain_on_delete=True),
                )

        self.action_group_id = action_group.id if action_group is not None else None
        self.register_outputs({"action_group_id": self.action_group_id})
