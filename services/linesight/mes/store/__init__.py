"""MES tables (schema `mes`)."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "mes"
