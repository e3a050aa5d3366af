"""The published taxonomy decides, not the copy packed inside the model.

A model carries the taxonomy it was trained under; the taxonomy service publishes newer versions
(severity rules, disposition table, confidence bands) that must reach the line without retraining.
This keeps the newest published version per product, taken from TaxonomyPublished (which carries
the document), and hands it to the decision for every frame of that product; a product with no
published version yet decides with the model's own.

A published version that no longer lists a class the model predicts decides that class's frames
through its `unknown_class` disposition (review, escalate or hold; never pass), because the model
knows nothing the new meaning of the class could be checked against.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from linesight.common.pb import events_pb2
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger(__name__)


class TaxonomyRules:
    """Newest published Taxonomy per product; read by decision threads, written by the bus."""

    def __init__(self) -> None:
        self._published: dict[str, Taxonomy] = {}
        self._lock = threading.Lock()

    def published(self, event: events_pb2.TaxonomyPublished) -> bool:
        """Apply an announced version (events arrive in publish order); False when unusable.

        An unusable document (absent from an old event, or invalid) leaves the version in force.
        """
        if not event.document_yaml:
            log.warning("TaxonomyPublished %s v%s carries no document; keeping %s", event.product,
                        event.version, self.version_of(event.product) or "the model's own")  # fmt: skip
            return False
        try:
            taxonomy = Taxonomy.from_yaml(event.document_yaml, source=f"{event.product} v{event.version}")
        except TaxonomyError as exc:
            log.error("published taxonomy unusable, keeping the one in force: %s", exc)
            return False
        if taxonomy.product != event.product:
            log.error("TaxonomyPublished for %s carries a document for %s; ignored", event.product,
                      taxonomy.product)  # fmt: skip
            return False
        with self._lock:
            self._published[taxonomy.product] = taxonomy
        log.info("taxonomy %s v%s now decides (rules changed for %s)", taxonomy.product, taxonomy.version,
                 list(event.rule_changed_classes) or "no class")  # fmt: skip
        return True

    def version_of(self, product: str) -> str:
        with self._lock:
            tax = self._published.get(product)
        return tax.version if tax else ""

    def for_model(self, product: str, model_taxonomy: Any, model_version: str) -> tuple[Any, str]:
        """(taxonomy, version) a frame of `product` is decided under: the newest published one,
        else the model's own (`model_version` is how the model names it)."""
        with self._lock:
            tax = self._published.get(product)
        return (model_taxonomy, model_version) if tax is None else (tax, tax.version)
