"""1: the whole model: datastores, hosts, VMs, users, groups, roles, permissions, audit, console tickets.

The audit log is append-only: SQLite triggers raise on UPDATE and DELETE;
PostgreSQL triggers call one function that raises on UPDATE, DELETE and TRUNCATE.
The built-in roles and the trusted-admins group are seeded here.
"""

import json

import sqlalchemy as sa
from alembic import op

from vmcrypt.rbac import BUILTIN_ROLES, TRUSTED_ADMINS_GROUP

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "the audit log is append-only"


def _text(name: str, **kw) -> sa.Column:  # noqa: ANN003
    return sa.Column(name, sa.Text, nullable=kw.pop("nullable", False), **kw)


def upgrade() -> None:
    """Create every table, the triggers that keep the audit log append-only, the built-in roles and the TrustedAdmins
    group."""
    op.create_table("datastores", _text("name", primary_key=True), _text("path", unique=True))
    op.create_table("hosts", _text("name", primary_key=True),
                    sa.Column("trusted", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "vms", _text("name", primary_key=True), _text("vmx_path", unique=True),
        sa.Column("datastore", sa.Text, sa.ForeignKey("datastores.name"), nullable=False),
        sa.Column("hw_version", sa.Integer, nullable=False), _text("firmware"),
        sa.Column("encrypted", sa.Integer, nullable=False), _text("provider_id", nullable=True),
        _text("key_id", nullable=True), sa.Column("vtpm", sa.Integer, nullable=False),
        _text("power_state", server_default="off"), sa.Column("vtpm_pid", sa.Integer),
        sa.Column("vtpm_port", sa.Integer))
    op.create_table("users", _text("name", primary_key=True), sa.Column("salt", sa.LargeBinary, nullable=False),
                    sa.Column("hash", sa.LargeBinary, nullable=False), _text("params"))
    op.create_table("groups", _text("name", primary_key=True))
    op.create_table("group_members", sa.Column("grp", sa.Text, sa.ForeignKey("groups.name"), nullable=False),
                    sa.Column("user", sa.Text, sa.ForeignKey("users.name"), nullable=False),
                    sa.PrimaryKeyConstraint("grp", "user"))
    op.create_table("roles", _text("name", primary_key=True), _text("privileges"),
                    sa.Column("builtin", sa.Integer, nullable=False))
    op.create_table("permissions", _text("entity_type"), _text("entity"), _text("principal"),
                    sa.Column("is_group", sa.Integer, nullable=False),
                    sa.Column("role", sa.Text, sa.ForeignKey("roles.name"), nullable=False),
                    sa.Column("propagate", sa.Integer, nullable=False),
                    sa.PrimaryKeyConstraint("entity_type", "entity", "principal", "is_group"))
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    _text("at"), _text("user"), _text("action"), _text("entity"), _text("outcome"), _text("detail"),
                    sqlite_autoincrement=True)
    op.create_table("console_tickets", sa.Column("digest", sa.LargeBinary, primary_key=True),
                    _text("vm"), _text("user"), _text("expires"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                       BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$""")
        op.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
        op.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                   "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
        op.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")
    else:
        op.execute(f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
                   f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
        op.execute(f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                   f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
    roles = sa.table("roles", sa.column("name"), sa.column("privileges"), sa.column("builtin"))
    op.bulk_insert(roles, [{"name": role.name, "privileges": json.dumps(sorted(p.value for p in role.privileges)),
                            "builtin": 1} for role in BUILTIN_ROLES.values()])
    op.bulk_insert(sa.table("groups", sa.column("name")), [{"name": TRUSTED_ADMINS_GROUP}])


def downgrade() -> None:
    """Refused: the inventory migrates forward only."""
    raise NotImplementedError("the inventory migrates forward only")
