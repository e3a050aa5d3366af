"""Labeling tables (schema `labeling`)."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "labeling"
