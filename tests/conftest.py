pytest_plugins = ["tests.support.database", "tests.support.idp_fixtures", "tests.support.api", "tests.support.webhook",
                  "tests.support.sentry_ingest", "tests.support.keys", "tests.support.azurite"]
