"""Monitoring and alerts, run under Pulumi's mocks: what an operator relies on when something goes
wrong — every signal has a rule, every rule notifies the action group, every query reads a table
the diagnostic settings actually fill, and the opt-ins (receivers, Defender) do what they say."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest
from infra_harness import (
    REPO,
    SECRET_MARK,
    SUBSCRIPTION,
    PalisadeMocks,
    ProgramRun,
    example_stack_config,
    is_secret,
    run_program,
)
from palisade_infra import alerting
from palisade_infra import config as stack_config

ACTION_GROUP = "azure-native:monitor:ActionGroup"
LOG_RULE = "azure-native:monitor:ScheduledQueryRule"
METRIC_RULE = "azure-native:monitor:MetricAlert"
DIAGNOSTICS = "azure-native:monitor:DiagnosticSetting"
PRICING = "azure-native:security:Pricing"
WORKSPACE = "azure-native:operationalinsights:Workspace"

WEBHOOK = f"https://hooks.example.com/alerts?token={SECRET_MARK}-webhook"

# Every signal the issue asks for, by rule name (prefix "palisade").
SIGNALS = {
    "palisade-postgres-failed-logins",
    "palisade-keyvault-access-denied",
    "palisade-api-5xx-rate",
    "palisade-api-restarts",
    "palisade-migration-failed",
    "palisade-app-alerts-critical",
    "palisade-app-alerts-warning",
    "palisade-app-alerts-info",
}


@pytest.fixture(scope="module")
def configured() -> ProgramRun:
    """Two e-mail receivers, a webhook receiver (a secret) and two Defender plans."""
    config = {
        **example_stack_config(),
        "palisade:alertEmails": ["secops@example.com", "oncall@example.org"],
        "palisade:defenderPlans": ["KeyVaults", "OpenSourceRelationalDatabases"],
    }
    return run_program(config, secrets={"palisade:azureMonitorWebhookUrl": WEBHOOK})


@pytest.fixture(scope="module")
def unnotified() -> ProgramRun:
    """No receiver at all."""
    config = example_stack_config()
    config.pop("palisade:alertEmails")
    return run_program(config)


def occurrences(value: Any, needle: str, wrapped: bool = False):
    """For each string containing `needle`: whether it sits inside a Pulumi secret."""
    if is_secret(value):
        yield from occurrences(value["value"], needle, True)
    elif isinstance(value, dict):
        for v in value.values():
            yield from occurrences(v, needle, wrapped)
    elif isinstance(value, list):
        for v in value:
            yield from occurrences(v, needle, wrapped)
    elif isinstance(value, str) and needle in value:
        yield wrapped


def rules(run: ProgramRun) -> list:
    return run.of_type(LOG_RULE) + run.of_type(METRIC_RULE)


def query_of(rule) -> str:
    return rule.inputs["criteria"]["allOf"][0]["query"]


def arm_type(resource_id: str) -> str:
    """`microsoft.keyvault/vaults` from `/subscriptions/../providers/Microsoft.KeyVault/vaults/kv-x`."""
    provider = resource_id.split("/providers/", 1)[1].split("/")
    return f"{provider[0]}/{provider[1]}".lower()


def sent_logs(run: ProgramRun) -> dict[str, set[tuple[str, str]]]:
    """resource id -> {(category, table it lands in)} for every diagnostic setting to the workspace."""
    workspace = run.one(WORKSPACE).state["id"]
    out: dict[str, set[tuple[str, str]]] = {}
    for setting in run.of_type(DIAGNOSTICS):
        s = setting.inputs
        assert s["workspaceId"] == workspace, f"{setting.name} does not go to the workspace"
        rtype = arm_type(s["resourceUri"])
        for log in s.get("logs", []):
            categories = ([log["category"]] if "category" in log
                          else alerting.CATEGORY_GROUPS[(rtype, log["categoryGroup"])])
            for category in categories:
                table = (alerting.RESOURCE_SPECIFIC_TABLES[category]
                         if s.get("logAnalyticsDestinationType") == "Dedicated" else "AzureDiagnostics")
                out.setdefault(s["resourceUri"], set()).add((category, table))
    return out


_TABLE_REF = re.compile(r"(?:^|\()\s*([A-Za-z][A-Za-z0-9_]*)\s*\|", re.MULTILINE)


def read_tables(query: str) -> list[str]:
    """The tables a query reads: each identifier that opens the query or a parenthesised branch."""
    return _TABLE_REF.findall(query.replace("union isfuzzy=true", ""))


def unsent_reads(query: str, sent: set[tuple[str, str]]) -> list[str]:
    """The tables a query reads that no diagnostic setting fills (empty when all is well).

    AzureDiagnostics counts as filled only for the categories the query names (`Category == "..."`)
    that a setting sends: the legacy table is where those land when resource-specific tables are not
    available for them.
    """
    tables = {table for _, table in sent}
    categories = {category for category, _ in sent}
    problems = []
    read = read_tables(query)
    if not read:
        problems.append("<no table>")
    for table in read:
        if table == "AzureDiagnostics":
            named = set(re.findall(r'Category == "([A-Za-z]+)"', query))
            if not named or not named <= categories:
                problems.append(f"AzureDiagnostics for {sorted(named)}")
        elif table not in tables:
            problems.append(table)
    return problems


class TestDiagnosticSettings:
    def test_postgres_logs_and_metrics_go_to_the_workspace_in_resource_specific_tables(self, example):
        server = example.one("azure-native:dbforpostgresql:Server").state["id"]
        setting = next(r.inputs for r in example.of_type(DIAGNOSTICS) if r.inputs["resourceUri"] == server)
        assert setting["workspaceId"] == example.one(WORKSPACE).state["id"]
        assert setting["logAnalyticsDestinationType"] == "Dedicated"
        assert {log["category"] for log in setting["logs"] if log["enabled"]} == {
            "PostgreSQLLogs", "PostgreSQLFlexSessions", "PostgreSQLFlexQueryStoreRuntime",
            "PostgreSQLFlexQueryStoreWaitStats"}
        assert setting["metrics"] == [{"category": "AllMetrics", "enabled": True}]

    def test_statement_texts_do_not_leave_the_database(self, example):
        server = example.one("azure-native:dbforpostgresql:Server").state["id"]
        sent = {category for category, _ in sent_logs(example)[server]}
        assert "PostgreSQLQueryStoreSqlText" not in sent

    def test_database_vault_and_apps_all_report_to_the_workspace(self, example):
        covered = {arm_type(r.inputs["resourceUri"]) for r in example.of_type(DIAGNOSTICS)}
        assert covered >= {
            "microsoft.dbforpostgresql/flexibleservers", "microsoft.keyvault/vaults",
            "microsoft.app/managedenvironments", "microsoft.app/containerapps", "microsoft.app/jobs"}
        sent_logs(example)  # asserts every setting targets the workspace
        for label, token in (("app", "azure-native:app:ContainerApp"), ("job", "azure-native:app:Job")):
            target = example.one(token).state["id"]
            setting = next(r.inputs for r in example.of_type(DIAGNOSTICS) if r.inputs["resourceUri"] == target)
            assert setting["metrics"] == [{"category": "AllMetrics", "enabled": True}], label


class TestRulesReadWhatIsSent:
    def test_every_log_rule_reads_only_tables_its_resource_sends(self, example):
        sent = sent_logs(example)
        everything = set().union(*sent.values())
        watched = {
            "palisade-postgres-failed-logins": example.one("azure-native:dbforpostgresql:Server").state["id"],
            "palisade-keyvault-access-denied": example.one("azure-native:keyvault:Vault").state["id"],
        }
        for rule in example.of_type(LOG_RULE):
            query = query_of(rule)
            resource = watched.get(rule.inputs["ruleName"])
            # A rule watching one resource reads that resource's tables; the app rules read the
            # environment's console logs.
            source = sent[resource] if resource else everything
            assert unsent_reads(query, source) == [], rule.inputs["ruleName"]
            if resource:
                assert f'_ResourceId =~ "{resource}"' in query

    def test_a_drift_between_settings_and_queries_is_caught(self, example):
        # The check above bites: the same queries against settings that send something else.
        server = example.one("azure-native:dbforpostgresql:Server").state["id"]
        query = query_of(example.one(LOG_RULE, "postgres-failed-logins"))
        assert unsent_reads(query, {("PostgreSQLLogs", "AzureDiagnostics")}) == ["PGSQLServerLogs"]
        assert unsent_reads(query, {("PostgreSQLFlexSessions", "PGSQLPgStatActivitySessions")}) == ["PGSQLServerLogs"]
        assert unsent_reads(query, sent_logs(example)[server]) == []
        vault_query = query_of(example.one(LOG_RULE, "keyvault-access-denied"))
        assert read_tables(vault_query) == ["AZKVAuditLogs", "AzureDiagnostics"]
        assert unsent_reads(vault_query, {("AzurePolicyEvaluationDetails", "AZKVPolicyEvaluationDetailsLogs")}) == [
            "AZKVAuditLogs", "AzureDiagnostics for ['AuditEvent']"]

    def test_app_rules_read_the_api_containers_console_lines(self, example):
        for rule in example.of_type(LOG_RULE):
            if rule.inputs["ruleName"].startswith(("palisade-app-alerts-", "palisade-api-")):
                assert read_tables(query_of(rule)) == ["ContainerAppConsoleLogs"]
                assert 'ContainerAppName == "ca-palisade-api" and ContainerName == "api"' in query_of(rule)

    def test_vault_denials_exclude_the_401_of_every_challenge_sign_in(self, example):
        query = query_of(example.one(LOG_RULE, "keyvault-access-denied"))
        assert "HttpStatusCode == 403" in query and "401" not in query


class TestEverySignalNotifies:
    def test_every_signal_has_a_rule(self, example):
        assert {r.inputs["ruleName"] for r in rules(example)} == SIGNALS

    def test_every_rule_notifies_the_action_group(self, example):
        group = example.one(ACTION_GROUP)
        for rule in example.of_type(LOG_RULE):
            assert rule.inputs["actions"]["actionGroups"] == [group.state["id"]], rule.name
        for rule in example.of_type(METRIC_RULE):
            assert rule.inputs["actions"] == [{"actionGroupId": group.state["id"]}], rule.name

    def test_rules_are_enabled_named_described_and_graded(self, example):
        for rule in rules(example):
            r = rule.inputs
            assert r["enabled"] is True
            assert len(r["description"]) > 40, r["ruleName"]
            assert r["severity"] in (0, 1, 2, 3, 4)
            assert r["evaluationFrequency"] <= r["windowSize"] or r["windowSize"] == "PT15M"
        severity = {r.inputs["ruleName"]: r.inputs["severity"] for r in rules(example)}
        assert severity["palisade-postgres-failed-logins"] == 1 and severity["palisade-migration-failed"] == 1
        assert severity["palisade-app-alerts-critical"] < severity["palisade-app-alerts-warning"] < severity[
            "palisade-app-alerts-info"]

    def test_log_rules_watch_the_workspace_in_the_stacks_region(self, example):
        workspace = example.one(WORKSPACE).state["id"]
        for rule in example.of_type(LOG_RULE):
            assert rule.inputs["scopes"] == [workspace] and rule.inputs["location"] == "westeurope"

    def test_platform_rules_watch_the_app_and_the_job(self, example):
        restarts = example.one(METRIC_RULE, "api-restarts").inputs
        assert restarts["scopes"] == [example.one("azure-native:app:ContainerApp").state["id"]]
        assert restarts["criteria"]["allOf"][0]["metricName"] == "RestartCount"
        failed = example.one(METRIC_RULE, "migration-failed").inputs
        assert failed["scopes"] == [example.one("azure-native:app:Job").state["id"]]
        criterion = failed["criteria"]["allOf"][0]
        assert criterion["metricName"] == "Executions"
        assert criterion["dimensions"] == [{"name": "state", "operator": "Include", "values": ["Failed"]}]

    def test_without_receivers_the_rules_still_fire_in_azure_monitor(self, unnotified):
        assert unnotified.of_type(ACTION_GROUP) == []
        assert {r.inputs["ruleName"] for r in rules(unnotified)} == SIGNALS
        assert all(r.inputs["actions"]["actionGroups"] == [] for r in unnotified.of_type(LOG_RULE))


class TestReceivers:
    def test_example_mails_the_security_team_in_the_common_schema(self, example):
        group = example.one(ACTION_GROUP).inputs
        assert group["location"] == "global" and group["enabled"] is True
        assert group["emailReceivers"] == [
            {"name": "email-0", "emailAddress": "secops@example.com", "useCommonAlertSchema": True}]
        assert group["webhookReceivers"] == []

    def test_the_webhook_url_stays_a_secret(self, configured):
        group = configured.one(ACTION_GROUP)
        assert list(occurrences(group.raw_inputs, WEBHOOK)) == [True], "the webhook URL must be stored encrypted"
        assert group.inputs["webhookReceivers"] == [{
            "name": "webhook", "serviceUri": WEBHOOK, "useCommonAlertSchema": True, "useAadAuth": False}]
        assert [r["emailAddress"] for r in group.inputs["emailReceivers"]] == ["secops@example.com", "oncall@example.org"]
        # Nowhere else: not in another resource, not in plain text, not in an output.
        holders = {r.type for r in configured.resources if SECRET_MARK + "-webhook" in json.dumps(r.inputs)}
        assert holders == {ACTION_GROUP}
        assert SECRET_MARK not in json.dumps(configured.outputs)


class TestAppAlerts:
    """The app's own alerts: whatever app/alerts writes when a rule fires is what the rules read."""

    engine = ast.parse((REPO / "app/alerts/engine.py").read_text())
    rules_module = ast.parse((REPO / "app/alerts/rules.py").read_text())

    def _fired_call(self) -> ast.Call:
        for node in ast.walk(self.engine):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value == alerting.APP_ALERT_EVENT):
                return node
        raise AssertionError(f"app/alerts/engine.py no longer logs {alerting.APP_ALERT_EVENT!r}")

    def test_the_app_still_logs_each_firing_with_rule_and_severity(self):
        extra = next(k.value for k in self._fired_call().keywords if k.arg == "extra")
        assert isinstance(extra, ast.Dict)
        assert {k.value for k in extra.keys if isinstance(k, ast.Constant)} >= {"rule", "key", "count", "severity"}
        loggers = [n.args[0].value for n in ast.walk(self.engine) if isinstance(n, ast.Call)
                   and getattr(n.func, "attr", None) == "getLogger" and n.args and isinstance(n.args[0], ast.Constant)]
        assert loggers == [alerting.APP_ALERT_LOGGER]

    def test_one_rule_per_app_severity(self, example):
        rule_class = next(n for n in ast.walk(self.rules_module) if isinstance(n, ast.ClassDef) and n.name == "Rule")
        annotation = next(n.annotation for n in rule_class.body
                          if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == "severity")
        app_severities = {e.value for e in annotation.slice.elts}  # Literal["info", "warning", "critical"]
        assert set(alerting.APP_SEVERITIES) == app_severities
        for severity in app_severities:
            rule = example.one(LOG_RULE, f"app-alerts-{severity}").inputs
            query = rule["criteria"]["allOf"][0]["query"]
            assert f'tostring(Entry.severity) == "{severity}"' in query
            assert 'tostring(Entry.event) == "alert_fired" and tostring(Entry.logger) == "palisade.alerts"' in query
            # One alert per app rule, every firing notified (no stateful de-duplication).
            assert rule["criteria"]["allOf"][0]["dimensions"] == [{"name": "Rule", "operator": "Include", "values": ["*"]}]
            assert rule["autoMitigate"] is False

    def test_the_5xx_rate_parses_the_app_servers_access_lines(self, example):
        rule = example.one(LOG_RULE, "api-5xx-rate").inputs
        criterion = rule["criteria"]["allOf"][0]
        assert (criterion["metricMeasureColumn"], criterion["operator"], criterion["threshold"]) == (
            "ServerErrorPercent", "GreaterThan", 5)
        pattern = re.search(r"extract\(@'(.+?)', 1", criterion["query"]).group(1)
        # uvicorn's access line format ('%s - "%s %s HTTP/%s" %d'), as the app renders it in "event".
        line = '%s - "%s %s HTTP/%s" %d' % ("127.0.0.1:50432", "GET", "/api/v1/tenants/x?page=2", "1.1", 503)
        assert re.search(pattern, line).group(1) == "503"
        assert re.search(pattern, line.replace("503", "200")).group(1) == "200"


class TestDefender:
    def test_no_plan_by_default(self, example):
        assert example.of_type(PRICING) == []

    def test_each_configured_plan_is_switched_on_for_the_subscription(self, configured, example):
        plans = {r.inputs["pricingName"]: r.inputs for r in configured.of_type(PRICING)}
        assert set(plans) == {"KeyVaults", "OpenSourceRelationalDatabases"}
        for plan in plans.values():
            assert plan["scopeId"] == f"/subscriptions/{SUBSCRIPTION}" and plan["pricingTier"] == "Standard"
        # The subscription comes from the deploying client, as the vault's tenant does: no new lookup.
        assert set(configured.calls) == set(example.calls)


def _problems(**overrides: Any) -> str:
    raw = {k.split(":", 1)[1]: v for k, v in example_stack_config().items()}
    raw.update(overrides)
    with pytest.raises(stack_config.ConfigError) as excinfo:
        stack_config.parse(raw)
    return str(excinfo.value)


class TestConfigRefusals:
    def test_a_bad_plan_name_stops_the_preview(self):
        mocks = PalisadeMocks()
        with pytest.raises(stack_config.ConfigError) as excinfo:
            run_program({**example_stack_config(), "palisade:defenderPlans": ["KeyVault"]}, preview=True, mocks=mocks)
        assert ("palisade:defenderPlans entry 'KeyVault' is not one of KeyVaults, OpenSourceRelationalDatabases, "
                "Arm, Containers") in str(excinfo.value)
        assert mocks.resources == []

    def test_plans_are_listed_once(self):
        assert "palisade:defenderPlans lists a plan twice" in _problems(defenderPlans='["Arm", "Arm"]')

    @pytest.mark.parametrize("address", ["secops", "secops@", "a@b", "Sec Ops <secops@example.com>",
                                         "a@example.com,b@example.com"])
    def test_a_bad_email_receiver_is_refused(self, address):
        assert f"palisade:alertEmails entry {address!r} is not an e-mail address" in _problems(alertEmails=[address])

    def test_an_email_receiver_is_listed_once(self):
        assert "lists an address twice" in _problems(alertEmails=["a@example.com", "A@example.com"])

    @pytest.mark.parametrize("url", ["http://hooks.example.com/x", "hooks.example.com/x"])
    def test_a_webhook_receiver_must_be_https_and_is_never_echoed(self, url):
        message = _problems(azureMonitorWebhookUrl=url)
        assert "palisade:azureMonitorWebhookUrl must be an https URL" in message
        assert url not in message

    def test_every_problem_is_listed_at_once(self):
        message = _problems(defenderPlans=["Dns"], alertEmails=["nobody"], azureMonitorWebhookUrl="http://x")
        assert message.count("\n  - ") == 3
