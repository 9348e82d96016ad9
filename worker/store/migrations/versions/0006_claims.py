"""Claims: a phone's lease (a dialer's pull) and why it became eligible, with the claim indexes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.store.models import UTCDateTime

revision = "0006"
down_revision = "0005"  # 0005_phones_by_lead.py
branch_labels = None
depends_on = None


# models.CLAIM_RANK as each backend spells it: the claim query's first key, held by the index.
RANK = {
    "postgresql": "(eligible_reason IS DISTINCT FROM 'callback')",
    "sqlite": "(eligible_reason IS NOT 'callback')",
}


def upgrade() -> None:
    with op.batch_alter_table("phones") as batch:
        batch.add_column(sa.Column("eligible_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("eligible_agent", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lease_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("leased_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("leased_to", sa.String(255), nullable=True))
    op.create_index(
        "ix_phones_lease_id",
        "phones",
        ["lease_id"],
        unique=True,
        postgresql_where=sa.text("lease_id IS NOT NULL"),
        sqlite_where=sa.text("lease_id IS NOT NULL"),
    )
    # Phones made eligible before this revision have no reason: claimed after the callbacks.
    op.create_index(
        "ix_phones_claim_free",
        "phones",
        ["plan_id", sa.text(RANK[op.get_bind().dialect.name]), "eligible_at", "phone_id"],
        postgresql_where=sa.text("eligible AND lease_id IS NULL"),
        sqlite_where=sa.text("eligible = 1 AND lease_id IS NULL"),
    )
    op.create_index(
        "ix_phones_claim_leased",
        "phones",
        ["plan_id", "leased_until"],
        postgresql_where=sa.text("eligible AND lease_id IS NOT NULL"),
        sqlite_where=sa.text("eligible = 1 AND lease_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_phones_claim_leased", table_name="phones")
    op.drop_index("ix_phones_claim_free", table_name="phones")
    op.drop_index("ix_phones_lease_id", table_name="phones")
    with op.batch_alter_table("phones") as batch:
        for name in ("leased_to", "leased_until", "lease_id", "eligible_agent", "eligible_reason"):
            batch.drop_column(name)
