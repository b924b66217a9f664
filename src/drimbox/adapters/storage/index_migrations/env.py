"""Alembic environment: always run on the connection handed over by ``index_db.migrate``."""

from __future__ import annotations

from alembic import context

from drimbox.adapters.storage.index_models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
