"""audit_key: the fingerprint of the installation key the audit log's numbers are keyed with

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 23:00:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # One row (id 1), written by `callwarden db upgrade` when it creates or first sees the key
    # file: start-up compares it with the key file so that a wrong key is an error, not a
    # silent mismatch. The key itself never enters the database.
    op.create_table(
        'audit_key',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('audit_key')
