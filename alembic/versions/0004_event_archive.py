"""outbox rows keep their public event id as two numbers: the archive reads events after an id

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_outbox = sa.table(
    'outbox_events',
    sa.column('id', sa.BigInteger()),
    sa.column('event_id', sa.String(40)),
    sa.column('event_ms', sa.BigInteger()),
    sa.column('event_seq', sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('event_seq', sa.BigInteger(), nullable=True))
    # Existing ids "ms-seq" split into the two numbers (in Python: the same on both databases).
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_outbox.c.id, _outbox.c.event_id).where(_outbox.c.event_id.is_not(None))
    ).all()
    for row_id, event_id in rows:
        ms, _, seq = event_id.partition('-')
        connection.execute(
            _outbox.update()
            .where(_outbox.c.id == row_id)
            .values(event_ms=int(ms), event_seq=int(seq or 0))
        )
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_column('event_id')
        batch_op.create_index('ix_outbox_events_event_key', ['event_ms', 'event_seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_events_event_key')
        batch_op.add_column(sa.Column('event_id', sa.String(length=40), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_outbox.c.id, _outbox.c.event_ms, _outbox.c.event_seq).where(
            _outbox.c.event_ms.is_not(None)
        )
    ).all()
    for row_id, ms, seq in rows:
        connection.execute(
            _outbox.update().where(_outbox.c.id == row_id).values(event_id=f'{ms}-{seq}')
        )
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_column('event_ms')
        batch_op.drop_column('event_seq')
