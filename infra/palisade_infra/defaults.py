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

# Keep-alive between the cloudflared sidecar and the API on the replica's loopback (the API has no
# other client: no ingress). The API closes a connection idle for PALISADE_KEEP_ALIVE_SECONDS (its
# own default, passed explicitly so the two stay in step); cloudflared keeps idle connections to
# its origin for originRequest.keepAliveTimeout, 90 s unless set (Cloudflare's tunnel configuration
# API). Set shorter than the API's, so the sidecar never sends a request on a connection the API is
# closing, which the visitor would get as a 502.
APP_KEEP_ALIVE_SECONDS = 5
TUNNEL_ORIGIN_KEEP_ALIVE_SECONDS = 4

# Cloudflare's managed WAF rulesets (the same ids in every zone).
CLOUDFLARE_MANAGED_RULESET = "efb7b8c949ac4650a09736fc376e9aee"
CLOUDFLARE_OWASP_RULESET = "4814384a9e5d4991b9815dcfc25d2f1f"
# OWASP Core: the rule that acts on the anomaly score (the others only add to the score).
OWASP_ANOMALY_SCORE_RULE = "6179ae15870a4bb7b2d480d4843b323c"
