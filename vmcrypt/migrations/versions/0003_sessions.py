"""3: the management service's sessions, shared by every service process of the inventory.

A row holds only the SHA-256 digest of the bearer token (a 256-bit random
value the client keeps), never the token; times are ISO 8601 in UTC, so that
comparing them as text orders them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the sessions table, indexed by expiry so that expired sessions are purged cheaply."""
    op.create_table("sessions", sa.Column("digest", sa.LargeBinary, primary_key=True),
                    sa.Column("user", sa.Text, nullable=False), sa.Column("created", sa.Text, nullable=False),
                    sa.Column("expires", sa.Text, nullable=False), sa.Column("last_used", sa.Text, nullable=False))
    op.create_index("sessions_expires", "sessions", ["expires"])


def downgrade() -> None:
    """Refused: the inventory migrates forward only."""
    raise NotImplementedError("the inventory migrates forward only")
