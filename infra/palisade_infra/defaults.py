"""Published facts the program builds on: Azure regions, secret names, Cloudflare ruleset ids.

Kept apart from the components so a reviewer can check them against their sources in one place.
"""

from __future__ import annotations

# Azure public-cloud regions (`az account list-locations --query "[].name"`, physical regions only).
# Whether a region offers every service used here (PostgreSQL Flexible Server with zone-redundant
# HA, Container Apps workload profiles, Premium Key Vault) is checked by Azure at deployment.
AZURE_REGIONS = frozenset(
    {
        "australiacentral", "australiacentral2", "australiaeast", "australiasoutheast",
        "austriaeast", "belgiumcentral", "brazilsouth", "brazilsoutheast", "canadacentral",
        "canadaeast", "centralindia", "centralus", "chilecentral", "denmarkeast", "eastasia",
        "eastus", "eastus2", "francecentral", "francesouth", "germanynorth", "germanywestcentral",
        "indonesiacentral", "israelcentral", "italynorth", "japaneast", "japanwest",
        "jioindiacentral", "jioindiawest", "koreacentral", "koreasouth", "malaysiawest",
        "mexicocentral", "newzealandnorth", "northcentralus", "northeurope", "norwayeast",
        "norwaywest", "polandcentral", "qatarcentral", "southafricanorth", "southafricawest",
        "southcentralus", "southeastasia", "southindia", "spaincentral", "swedencentral",
        "swedensouth", "switzerlandnorth", "switzerlandwest", "uaecentral", "uaenorth", "uksouth",
        "ukwest", "westcentralus", "westeurope", "westindia", "westus", "westus2", "westus3",
    }
)

# Key Vault secret names: the application's names mapped the way `app.crypto.secrets.
# key_vault_secret_name` maps them (lower case, `_` and `.` become `-`), so the app's keyvault
# secret provider finds what this program stores. The deploy-contract test
# (tests/deploy/test_azure_contract.py) starts the real app against these names.
DATABASE_URL = "database-url"  # the app role (NOSUPERUSER, NOBYPASSRLS): the running app
ADMIN_DATABASE_URL = "admin-database-url"  # the schema owner: the migration job only
TURNSTILE_SECRET = "turnstile-secret"
TUNNEL_TOKEN = "cloudflared-tunnel-token"  # the cloudflared sidecar only
APPINSIGHTS_CONNECTION_STRING = "appinsights-connection-string"
SENTRY_DSN = "sentry-dsn"
ALERT_WEBHOOK_SECRET = "alert-webhook-secret"

# What each identity may read (one role assignment per secret). The API's identity never gets the
# schema owner's URL; `palisade serve` never asks for it, `palisade migrate` asks for both URLs.
APP_SECRETS = (DATABASE_URL, TURNSTILE_SECRET, SENTRY_DSN, ALERT_WEBHOOK_SECRET)
MIGRATION_SECRETS = (ADMIN_DATABASE_URL, DATABASE_URL)
# Of the app's secrets, those it reads only when the stack stores them (PALISADE_OPTIONAL_SECRETS).
OPTIONAL_APP_SECRETS = (SENTRY_DSN, ALERT_WEBHOOK_SECRET)
# Stack config keys whose values go to the vault under these names.
SECRET_CONFIG_KEYS = {"sentryDsn": SENTRY_DSN, "alertWebhookSecret": ALERT_WEBHOOK_SECRET}

# Cloudflare's managed WAF rulesets (the same ids in every zone).
CLOUDFLARE_MANAGED_RULESET = "efb7b8c949ac4650a09736fc376e9aee"
CLOUDFLARE_OWASP_RULESET = "4814384a9e5d4991b9815dcfc25d2f1f"
# OWASP Core: the rule that acts on the anomaly score (the others only add to the score).
OWASP_ANOMALY_SCORE_RULE = "6179ae15870a4bb7b2d480d4843b323c"
