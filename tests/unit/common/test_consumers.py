"""The provisioner's consumer catalogue names the consumers the services actually run, with the
services' own settings: a consumer the provisioner creates must be the one a service binds to."""

from __future__ import annotations

import pytest

from linesight.common import subjects
from linesight.common.consumers import (
    ConsumerSpec,
    differs,
    inference_durable,
    parse_groups,
    plant_consumers,
)
from linesight.inference.app.config import InferenceConfig
from linesight.labeling.api import bus as labeling_bus
from linesight.mes.api import bus as mes_bus
from linesight.mes.app.dispatch import DispatchConfig
from linesight.training.api import bus as training_bus


def _by_name(plant: str = "p1") -> dict[str, ConsumerSpec]:
    return {s.durable: s for s in plant_consumers(plant)}


def test_the_catalogue_holds_every_service_durable_with_its_filter() -> None:
    specs = _by_name()
    wanted = {
        inference_durable(InferenceConfig().station_group): (
            subjects.station_pattern(subjects.FRAME_CAPTURED, plant="p1"),
        ),
        mes_bus.DURABLE: (mes_bus.result_subject("p1"),),
        labeling_bus.DURABLE: (labeling_bus.result_subject("p1"),),
        labeling_bus.TAXONOMY_DURABLE: (labeling_bus.taxonomy_subject("p1"),),
        training_bus.DURABLE: (training_bus.LABELS,),
        training_bus.TAXONOMY_DURABLE: (training_bus.TAXONOMIES,),
        training_bus.RESULTS_DURABLE: (training_bus.RESULTS,),
        training_bus.SHADOW_DURABLE: (training_bus.SHADOW_RESULTS,),
    }
    assert {name: spec.filters for name, spec in specs.items()} == wanted


def test_line_consumers_redeliver_within_half_the_reject_window() -> None:
    """Inference's frames and MES's results: a crashed holder's message comes back after half the
    reject window (the services' own settings), everything else keeps the bus default."""
    specs = _by_name()
    inference = specs[inference_durable("all")]
    cfg = InferenceConfig()
    assert (inference.ack_wait_s, inference.max_deliver) == (cfg.ack_wait_s, cfg.max_deliver)
    assert specs[mes_bus.DURABLE].ack_wait_s == DispatchConfig(endpoint="x").reject_window_s / 2
    assert specs[labeling_bus.DURABLE].ack_wait_s == 30.0
    broker = inference.config()
    assert broker.max_deliver == cfg.max_deliver + 1  # the last failed delivery still reaches the DLQ
    assert broker.filter_subject == inference.filters[0] and broker.filter_subjects is None


def test_station_groups_get_one_consumer_each_on_exactly_their_stations() -> None:
    groups = parse_groups("a=line1/st1,line1/st2; b=st3,line2/st3")
    assert groups == {"a": ("line1/st1", "line1/st2"), "b": ("st3", "line2/st3")}
    specs = _by_name_groups(groups)
    assert specs["inference-frame-captured-a"].filters == (
        "linesight.p1.line1.st1.frame.captured",
        "linesight.p1.line1.st2.frame.captured",
    )
    # A bare station covers that station on every line: no overlapping filters.
    assert specs["inference-frame-captured-b"].filters == ("linesight.p1.*.st3.frame.captured",)
    config = specs["inference-frame-captured-a"].config()
    assert config.filter_subject is None and config.filter_subjects == list(
        specs["inference-frame-captured-a"].filters
    )


def _by_name_groups(groups: dict[str, tuple[str, ...]]) -> dict[str, ConsumerSpec]:
    return {s.durable: s for s in plant_consumers("p1", inference_groups=groups)}


@pytest.mark.parametrize(
    ("text", "error"),
    [("", "no station group"), ("a=st1;a=st2", "given twice"), ("a.b=st1", "invalid station group")],
)
def test_bad_station_groups_are_refused_naming_the_problem(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_groups(text)


def test_differs_names_what_changed_and_ignores_server_defaults() -> None:
    spec = _by_name()[mes_bus.DURABLE]
    current = spec.config()
    current.num_replicas = 1  # filled in by the server
    assert differs(current, spec.config()) == []
    slower = ConsumerSpec(spec.service, spec.durable, spec.filters, ack_wait_s=30.0, batch=spec.batch)
    assert differs(slower.config(), spec.config()) == ["ack_wait 30.0 -> 2.5"]
