"""Alembic migrations of the national index, shipped in the package and run at startup."""
