"""2: the latest generation of each VM's encrypted .nvram seen by the management plane (rollback detection)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``vms.nvram_generation`` (NULL until a generation of the VM's .nvram is recorded)."""
    op.add_column("vms", sa.Column("nvram_generation", sa.Integer))


def downgrade() -> None:
    """Refused: the inventory migrates forward only."""
    raise NotImplementedError("the inventory migrates forward only")
