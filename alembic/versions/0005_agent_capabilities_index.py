"""agents by capability (GIN, PostgreSQL only): auto-assignment reads only the agents that can do the work

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # GIN is PostgreSQL's (see service/models/agents.py)
    op.create_index(
        'ix_agents_capabilities',
        'agents',
        ['capabilities'],
        postgresql_using='gin',
        postgresql_ops={'capabilities': 'jsonb_path_ops'},
        postgresql_where=sa.text('deleted_at IS NULL'),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_agents_capabilities', table_name='agents')
