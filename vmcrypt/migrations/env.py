"""Alembic's environment: migrate the connection the inventory hands over (``config.attributes['connection']``)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():  # joins the inventory's transaction: all of a migration or none
    context.run_migrations()
