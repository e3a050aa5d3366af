"""Taxonomy tables (schema `taxonomy`)."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "taxonomy"
