"""Validated uploads: workspace brand assets and knowledge files, stored in PostgreSQL under RLS."""
