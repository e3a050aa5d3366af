"""The inference service decides with the newest published taxonomy of the product."""

import numpy as np
import yaml

from linesight.common.pb import events_pb2
from linesight.inference.app.taxonomy_rules import TaxonomyRules
from linesight.vision.components.scoring import Prediction
from linesight.vision.decide import decide
from linesight.vision.taxonomy import Taxonomy


def published(
    product: str, version: str, dispositions: dict[str, str], classes: tuple[str, ...] = ("scratch",)
) -> events_pb2.TaxonomyPublished:
    doc = {
        "product": product, "version": version,
        "classes": [{"name": c, "default_severity": "major"} for c in classes],
        "disposition": {"default": dispositions},
    }  # fmt: skip
    return events_pb2.TaxonomyPublished(product=product, version=version, document_yaml=yaml.safe_dump(doc))


def scratch(p: float = 0.99) -> Prediction:
    heat = np.full((32, 32), 2.0, np.float32)
    return Prediction(
        anomaly_score=2.0, class_probs={"good": 1 - p, "scratch": p}, heatmap=heat,
        defect_probability=p, defect_threshold=0.5, top_class="scratch",
    )  # fmt: skip


def test_published_version_replaces_the_models_own_and_the_newest_wins() -> None:
    own = Taxonomy.default_for(["scratch"], product="widget")
    rules = TaxonomyRules()
    assert rules.for_model("widget", own, "tx-1") == (own, "tx-1") and rules.version_of("widget") == ""
    assert decide(scratch(), own).disposition == "reject"

    assert rules.published(
        published("widget", "2", {"minor": "rework", "major": "hold", "critical": "reject"})
    )
    tax, version = rules.for_model("widget", own, "tx-1")
    assert version == tax.version == "2" and decide(scratch(), tax).disposition == "hold"
    assert decide(scratch(), tax).taxonomy_version == "2"
    assert rules.for_model("other", own, "tx-1") == (own, "tx-1")  # another product's version does not apply

    assert rules.published(
        published("widget", "3", {"minor": "rework", "major": "rework", "critical": "reject"})
    )
    assert decide(scratch(), rules.for_model("widget", own, "tx-1")[0]).disposition == "rework"


def test_unusable_documents_keep_the_version_in_force() -> None:
    rules = TaxonomyRules()
    assert rules.published(published("widget", "2", {"major": "hold"}))
    assert not rules.published(events_pb2.TaxonomyPublished(product="widget", version="3"))  # no document
    bad = published("widget", "4", {"major": "ship"})
    assert not rules.published(bad)
    other = published("gadget", "5", {"major": "hold"}).document_yaml
    assert not rules.published(
        events_pb2.TaxonomyPublished(product="widget", version="5", document_yaml=other)
    )  # a document for another product under this product's name
    assert rules.version_of("widget") == "2"


def test_a_class_the_published_version_does_not_know_is_never_passed() -> None:
    rules = TaxonomyRules()
    rules.published(published("widget", "2", {"major": "reject"}, classes=("crack",)))
    d = decide(scratch(), rules.for_model("widget", Taxonomy.default_for(["scratch"]), "tx-1")[0])
    assert d.verdict == "review" and d.disposition in ("review", "escalate", "hold")
    assert "not in taxonomy v2" in (d.review_reason or "")
