"""Persistence: the tables, their migrations, and the SQL behind ingestion, dispatch, firing
and the commands that read state."""
