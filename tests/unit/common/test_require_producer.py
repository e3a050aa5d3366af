"""Consumers of verdicts refuse an event whose producer is not the service that owns the subject."""

import pytest

from linesight.common.bus import PoisonMessage, require_producer
from linesight.common.events import new_meta
from linesight.common.pb import events_pb2


def test_require_producer():
    require_producer(events_pb2.InspectionResult(meta=new_meta("inference/station1")), "inference")
    with pytest.raises(PoisonMessage, match="'capture', not 'inference'"):
        require_producer(events_pb2.InspectionResult(meta=new_meta("capture")), "inference")
    with pytest.raises(PoisonMessage, match="producer ''"):
        require_producer(events_pb2.InspectionResult(), "inference")
