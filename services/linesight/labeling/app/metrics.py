"""Labeling metrics (OpenTelemetry; rendered on /metrics by linesight.common.service).

Names: linesight_labeling_queue_depth{queue}, _queue_oldest_age_seconds{queue},
_queue_capacity_per_shift{queue}, _queue_over_capacity{queue} (1 while deeper than one shift's
capacity), _queue_claimed{queue}, _kappa_fleiss{sample}, _kappa_pair{sample,pair},
_kappa_class{sample,label}. Gauges read the app's last computed figures, so a scrape never
queries the database. Instruments are registered once per process (the OpenTelemetry meter keeps
the first callback of a name), and observe whichever app `bind` was last given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from linesight.common import telemetry
from linesight.labeling.app.core import QueueStat
from linesight.labeling.app.labeling import LabelingApp


class LabelingMetrics:
    _instance: LabelingMetrics | None = None

    @classmethod
    def bind(cls, labeling: LabelingApp) -> LabelingMetrics:
        """The process's labeling metrics, now observing `labeling`."""
        if cls._instance is None:
            cls._instance = cls(labeling)
        cls._instance.labeling = labeling
        return cls._instance

    def __init__(self, labeling: LabelingApp) -> None:
        self.labeling = labeling
        m = telemetry.meter("linesight.labeling")
        queue_gauges: dict[str, tuple[Callable[[QueueStat], float], str]] = {
            "linesight_labeling_queue_depth": (lambda s: s.depth, "open items per queue"),
            "linesight_labeling_queue_oldest_age_seconds": (
                lambda s: s.oldest_age_s,
                "age of the oldest open item",
            ),
            "linesight_labeling_queue_capacity_per_shift": (
                lambda s: s.capacity_per_shift,
                "items one shift works",
            ),
            "linesight_labeling_queue_over_capacity": (
                lambda s: 1.0 if s.over_capacity else 0.0,
                "1 while a queue holds more than one shift can work through",
            ),
            "linesight_labeling_queue_claimed": (lambda s: s.claimed, "items claimed under a live lease"),
        }
        for name, (value, description) in queue_gauges.items():
            m.create_observable_gauge(name, [self._per_queue(value)], description=description)
        m.create_observable_gauge(
            "linesight_labeling_kappa_fleiss", [self._fleiss], description="Fleiss' kappa of a shared sample"
        )
        m.create_observable_gauge(
            "linesight_labeling_kappa_pair", [self._pairs], description="Cohen's kappa of a rater pair"
        )
        m.create_observable_gauge(
            "linesight_labeling_kappa_class",
            [self._classes],
            description="one-vs-rest Cohen's kappa of a class",
        )

    def _per_queue(
        self, value: Callable[[QueueStat], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(s), {"queue": s.queue}) for s in self.labeling.last_queue_stats]

        return observe

    def _fleiss(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(f.fleiss_kappa, {"sample": s}) for s, f in self.labeling.last_agreement.items()]

    def _pairs(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p.kappa, {"sample": s, "pair": f"{p.rater_a}|{p.rater_b}"})
            for s, f in self.labeling.last_agreement.items()
            for p in f.pairs
        ]

    def _classes(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(k, {"sample": s, "label": c})
            for s, f in self.labeling.last_agreement.items()
            for c, k in f.classes.items()
        ]
