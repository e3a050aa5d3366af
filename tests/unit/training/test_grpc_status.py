"""The training API's one exception -> status table: each application error reaches the caller
as the status code and sentence the table says, and every RPC goes through it."""

from __future__ import annotations

import grpc
import pytest

from linesight.common.pb import training_pb2_grpc
from linesight.training.api.grpc import TrainingServicer, status_of
from linesight.training.app.datasets import (
    CurveUnavailableError,
    DatasetBlockedError,
    DatasetImportError,
    LabelsNotReadyError,
    UnknownDatasetError,
)
from linesight.training.app.jobs import JobRequestError, PromotionError, UnknownJobError
from linesight.training.app.promotion import (
    GateNotMetError,
    NoShadowModelError,
    RollbackError,
    StageError,
    UnknownModelError,
)

FP, NF, IA = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (GateNotMetError("release gate v2: recall[critical] 0.9 < 0.99"), FP, "release gate v2: recall"),
        (DatasetBlockedError("dataset d has blocking hygiene findings"), FP, "blocking hygiene findings"),
        (RollbackError("tile has no earlier production model"), FP, "no earlier production model"),
        (StageError("m is the production model"), FP, "is the production model"),
        (LabelsNotReadyError("labels of 'tile'", ["frame f1: no part id"]), FP, "frame f1: no part id"),
        (CurveUnavailableError("dataset d: no val split"), FP, "no val split"),
        (PromotionError("a promotion needs a reason"), IA, "needs a reason"),
        (JobRequestError("an incremental job needs a base model"), IA, "needs a base model"),
        (DatasetImportError("m.csv", ["row 3 (a.png): image is 0 bytes"]), IA, "row 3 (a.png): image is 0"),
        (ValueError("product: too long"), IA, "product: too long"),
        (UnknownModelError("m-1"), NF, "no model 'm-1'"),
        (NoShadowModelError("tile"), NF, "no model in shadow for 'tile'"),
        (UnknownJobError("j-9"), NF, "no training job 'j-9'"),
        (UnknownDatasetError("tile-abc"), NF, "no dataset version 'tile-abc'"),
        (KeyError("tile has no release gate version 7"), NF, "tile has no release gate version 7"),
    ],
)
def test_each_error_maps_to_its_status_and_sentence(
    exc: Exception, code: grpc.StatusCode, message: str
) -> None:
    mapped = status_of(exc)
    assert mapped is not None and mapped[0] == code and message in mapped[1]


def test_errors_outside_the_table_go_on_to_the_interceptor() -> None:
    assert status_of(RuntimeError("database gone")) is None
    assert status_of(PermissionError("no qa_owner grant")) is None  # the auth layer answers it


def test_every_rpc_is_wrapped() -> None:
    rpcs = [n for n in vars(training_pb2_grpc.TrainingServiceServicer) if n[:1].isupper()]
    implemented = [n for n in rpcs if n in vars(TrainingServicer)]
    assert len(implemented) == len(rpcs)
    assert all(hasattr(getattr(TrainingServicer, n), "__wrapped__") for n in implemented)
