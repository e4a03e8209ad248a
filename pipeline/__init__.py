"""The Dagster code location: assets, checks, resources, jobs, schedules (see definitions.py)."""
