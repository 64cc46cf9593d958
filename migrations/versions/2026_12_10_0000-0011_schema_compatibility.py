"""Record which releases can run on the schema: the newest migration that needs the previous release stopped.

Why (issue 17): a release accepted only a schema at its own head, so during a host-by-host
upgrade a host that went back to the previous release after the migration ran (a failed switch,
a reboot) could not start, although the migration was an expand step that release runs against.
`palisade migrate` now writes here, after every run, the newest applied migration that declares
`needs_stop` (a contract step), or this revision while there is none; a release accepts a newer
schema when it knows that revision (so no contract step it cannot run against was applied since
its own head). Doctor reads it (SELECT for the app role); only the schema owner writes it.

Expand only: a new table the previous release never reads.
"""

from alembic import op

from migrations.helpers import app_role

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE schema_compatibility ("
        " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
        " compatible_since text NOT NULL)"
    )
    op.execute("INSERT INTO schema_compatibility (compatible_since) VALUES ('0011')")
    op.execute(f'GRANT SELECT ON schema_compatibility TO "{app_role()}"')


def downgrade() -> None:
    op.execute("DROP TABLE schema_compatibility")
