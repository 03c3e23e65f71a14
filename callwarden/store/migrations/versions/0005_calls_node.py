"""calls.node: the PBX node that handled the call, and the open-calls index reconciliation reads

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Partial: only calls without an end, which is what reconciliation asks for (few rows, however
# many CDRs the store keeps). Both backends support the WHERE clause. Columns as ix_calls_pbx,
# so that SQLite's planner prefers it (see models.Call).
_OPEN = sa.text("ended_at IS NULL")


def upgrade() -> None:
    """Upgrade schema."""
    # Nullable, no default: existing rows (written before the upgrade) keep NULL = node unknown.
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('node', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_calls_open', ['pbx', 'pbx_call_id'], unique=False,
                              sqlite_where=_OPEN, postgresql_where=_OPEN)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index('ix_calls_open')
        batch_op.drop_column('node')
