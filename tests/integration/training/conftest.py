"""Fixtures of the training integration tests (real NATS, PostgreSQL and S3 from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_train_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 generated 64 px images (good and scratch), two batches: trains in a few seconds."""
    from linesight.vision.data.synth import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("tiny-train") / "ds", n_good=16, per_class=6, seed=1, size=64,
        classes=("scratch",), n_batches=2, n_stations=1,
    )  # fmt: skip
