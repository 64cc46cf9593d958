"""Published facts the program builds on: Cloudflare's edge ranges, Azure regions, secret names.

Kept apart from the components so a reviewer can check them against their sources in one place.
"""

from __future__ import annotations

# https://www.cloudflare.com/ips-v4 and https://www.cloudflare.com/ips-v6 (Cloudflare changes these
# rarely and announces it; `palisade:cloudflareRanges` replaces the whole list when it does).
CLOUDFLARE_IPV4 = (
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
)
CLOUDFLARE_IPV6 = (
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
)
CLOUDFLARE_RANGES = CLOUDFLARE_IPV4 + CLOUDFLARE_IPV6

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
# secret provider finds what this program stores.
DATABASE_URL = "database-url"  # the app role (NOSUPERUSER, NOBYPASSRLS): the running app
ADMIN_DATABASE_URL = "admin-database-url"  # the schema owner: the migration job only
TURNSTILE_SECRET = "turnstile-secret"
ORIGIN_TLS = "origin-tls"  # Cloudflare Origin CA certificate + key, PEM, for the Azure ingress
APPINSIGHTS_CONNECTION_STRING = "appinsights-connection-string"
SENTRY_DSN = "sentry-dsn"
ALERT_WEBHOOK_SECRET = "alert-webhook-secret"

# Key Vault secret -> the environment variable the app reads it from (`app.config.Settings`).
APP_SECRET_ENV = {
    DATABASE_URL: "PALISADE_DATABASE_URL",
    TURNSTILE_SECRET: "PALISADE_TURNSTILE_SECRET",
    SENTRY_DSN: "PALISADE_SENTRY_DSN",
    ALERT_WEBHOOK_SECRET: "PALISADE_ALERT_WEBHOOK_SECRET",
}
# `palisade migrate` needs both URLs (it creates the app role named in the app URL) and, because it
# validates production settings as a whole, the Turnstile secret.
MIGRATION_SECRET_ENV = {
    ADMIN_DATABASE_URL: "PALISADE_ADMIN_DATABASE_URL",
    DATABASE_URL: "PALISADE_DATABASE_URL",
    TURNSTILE_SECRET: "PALISADE_TURNSTILE_SECRET",
}
# Stack config keys whose values go to the vault under these names.
SECRET_CONFIG_KEYS = {"sentryDsn": SENTRY_DSN, "alertWebhookSecret": ALERT_WEBHOOK_SECRET}

# Cloudflare's managed WAF rulesets (the same ids in every zone).
CLOUDFLARE_MANAGED_RULESET = "efb7b8c949ac4650a09736fc376e9aee"
CLOUDFLARE_OWASP_RULESET = "4814384a9e5d4991b9815dcfc25d2f1f"
# OWASP Core: the rule that acts on the anomaly score (the others only add to the score).
OWASP_ANOMALY_SCORE_RULE = "6179ae15870a4bb7b2d480d4843b323c"
