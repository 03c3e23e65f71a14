"""registry_version: a counter every registry write moves (triggers), so nodes cache the registry

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 23:00:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Every table the decision's in-memory registry snapshot is built from
#: (callwarden/store/snapshot.py). Triggers rather than application code: a CLI, the policing
#: detector, an administrator's hand-written SQL and an older callwarden all move the counter.
REGISTRY_TABLES = ("tenants", "access_numbers", "trunks", "campaigns", "proof_documents")
_OPS = ("INSERT", "UPDATE", "DELETE")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'registry_version',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.execute("INSERT INTO registry_version (id, version) VALUES (1, 1)")
    if op.get_bind().dialect.name == "postgresql":
        # Statement-level: a 10,000-row registry import moves it once.
        op.execute("""
            CREATE FUNCTION callwarden_bump_registry_version() RETURNS trigger AS $$
            BEGIN
                UPDATE registry_version SET version = version + 1 WHERE id = 1;
                RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        for table in REGISTRY_TABLES:
            op.execute(f"CREATE TRIGGER {table}_registry_version AFTER INSERT OR UPDATE OR DELETE "
                       f"ON {table} FOR EACH STATEMENT "
                       "EXECUTE FUNCTION callwarden_bump_registry_version()")
        return
    for table in REGISTRY_TABLES:  # SQLite has row-level triggers only
        for operation in _OPS:
            op.execute(f"CREATE TRIGGER {table}_{operation.lower()}_registry_version "
                       f"AFTER {operation} ON {table} BEGIN "
                       "UPDATE registry_version SET version = version + 1 WHERE id = 1; END")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        for table in REGISTRY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_registry_version ON {table}")
        op.execute("DROP FUNCTION IF EXISTS callwarden_bump_registry_version()")
    else:
        for table in REGISTRY_TABLES:
            for operation in _OPS:
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{operation.lower()}_registry_version")
    op.drop_table('registry_version')
