"""Training fits with the product's newest published taxonomy, kept from TaxonomyPublished in its
own schema, and names that version in the model (real NATS, PostgreSQL, S3; a tiny dataset)."""

from __future__ import annotations

import asyncio
import io
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.taxonomy.service import setup as taxonomy_setup
from linesight.training.app.jobs import TrainingApp
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup
from linesight.vision.taxonomy import Taxonomy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LENIENT = ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linesight.vision.data.synth import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("tiny") / "ds", n_good=16, per_class=6, seed=1, size=64,
        classes=("scratch",), n_batches=2, n_stations=1,
    )  # fmt: skip


def document(product: str, version: str, cls: str) -> str:
    return yaml.safe_dump({
        "product": product, "version": version,
        "classes": [{"name": cls, "kind": "directional", "definition": "A line in the glaze.",
                     "augmentation": {"rotation": "none", "flips": False}, "default_severity": "major"}],
        "disposition": {cls: {"minor": "rework", "major": "hold", "critical": "reject"}},
    })  # fmt: skip


async def kept(training: TrainingApp, product: str, version: str) -> Taxonomy:
    async with asyncio.timeout(15):
        while True:
            tax = await training.taxonomy_for(product)
            if tax is not None and tax.version == version:
                return tax
            await asyncio.sleep(0.1)


async def test_training_fits_with_the_published_taxonomy(
    stack_settings: Settings, mint: Callable[..., str], tiny_dataset: Path
) -> None:
    product = f"tx{uuid.uuid4().hex[:6]}"
    token = mint(f"qa_owner@{stack_settings.plant}/{product}", subject="quinn")
    options = TrainingOptions(product=product, input_size=(64, 64))
    async with service_running("taxonomy", taxonomy_setup, settings=stack_settings), \
            service_running("training", make_setup(TrainingServiceOptions(gate=LENIENT)),
                            settings=stack_settings) as training_svc, \
            TaxonomyClient(stack_settings.grpc_target("taxonomy"), token=token) as taxonomy:  # fmt: skip
        training = training_svc.app
        assert await training.taxonomy_for(product) is None
        await taxonomy.publish_taxonomy(product, document(product, "5", "scratch"))
        tax = await kept(training, product, "5")
        assert tax.get("scratch").augmentation.rotation == "none"

        outcome = await training.train_once(tiny_dataset, product=product, options=options)
        model = await training.get_model(outcome.model_version)
        assert model.taxonomy_version == "5"
        blob = ObjectStore(S3Config.from_settings(stack_settings)).get_bytes(
            "models", f"{product}/{outcome.model_version}.tar.gz"
        )
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            member = tar.extractfile(f"{outcome.model_version}/taxonomy.yaml")
            assert member is not None
            exported = Taxonomy.from_yaml(member.read().decode())
        assert exported.version == "5" and exported.get("scratch").definition == "A line in the glaze."
        assert exported.disposition_for("scratch", "major") == "hold"

        # a newer version without the dataset's class: training refuses rather than guess
        await taxonomy.publish_taxonomy(product, document(product, "6", "crack"))
        await kept(training, product, "6")
        with pytest.raises(ValueError, match="not classes of taxonomy"):
            await training.train_once(tiny_dataset, product=product, options=options)
