"""The inventory's schema migrations (Alembic), one per schema version, for SQLite and PostgreSQL alike.

Revisions are numbered ``0001``, ``0002``, ...: the number is the schema version
(the same number older builds kept in SQLite's ``PRAGMA user_version``).
``vmcrypt.inventory_schema`` runs them on an open connection; nothing here reads
a configuration file.
"""
