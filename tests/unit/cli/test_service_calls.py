"""The shared ending of `linesight dataset` / `model`: the same exit codes and outputs for the
same outcomes, whichever command ran."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from linesight.cli.service_calls import EXIT_FAILED, EXIT_OK, EXIT_USAGE, message_dict, run_command
from linesight.common.grpcutil import InvalidArgument, NotFound, ServiceError, ServiceUnavailable
from linesight.common.pb import training_pb2


def _args(tmp_path: Path, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(
        action="show", state_dir=tmp_path / "state", json=tmp_path / "out.json", **extra
    )


def test_result_is_summarised_and_written_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def call(_settings: Any) -> dict[str, Any]:
        return {"version": "tile-1", "images": 3}

    code = run_command("dataset", _args(tmp_path), call, lambda a, r: f"{a}: {r['version']}")
    assert code == EXIT_OK
    assert capsys.readouterr().out == "show: tile-1\n"
    assert json.loads((tmp_path / "out.json").read_text()) == {"version": "tile-1", "images": 3}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("training ImportDataset: INVALID_ARGUMENT: row 3: image is 0 bytes"), EXIT_USAGE),
        (NotFound("training GetModel: NOT_FOUND: no model 'm'"), EXIT_USAGE),
        (ServiceError("training PromoteModel: PERMISSION_DENIED: no qa_owner grant"), EXIT_USAGE),
        (
            ServiceUnavailable("training at 127.0.0.1:1 not reachable", grpc.StatusCode.UNAVAILABLE),
            EXIT_FAILED,
        ),
        (ServiceError("training ListModels: INTERNAL: boom", grpc.StatusCode.INTERNAL), EXIT_FAILED),
    ],
)
def test_failures_exit_with_their_code_and_name_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], error: Exception, code: int
) -> None:
    async def call(_settings: Any) -> dict[str, Any]:
        raise error

    assert run_command("model", _args(tmp_path), call, lambda a, r: "unused") == code
    err = capsys.readouterr().err
    assert err.startswith("linesight model show: ") and str(error) in err
    assert not (tmp_path / "out.json").exists()  # nothing written for a failed call


def test_json_text_fields_are_parsed_under_their_key() -> None:
    v = training_pb2.DatasetVersion(version="tile-1", counts_json='{"class": {"good": 2}}')
    out = message_dict(v, counts_json="counts")
    assert out["counts"] == {"class": {"good": 2}} and "counts_json" not in out
    assert out["blocking"] is False  # every field, set or not


def test_dataset_report_summary_shows_seeded_parts_and_the_learning_curve() -> None:
    import argparse as ap

    from linesight.cli import cmd_dataset

    parser = ap.ArgumentParser()
    cmd_dataset.register(parser.add_subparsers())
    args = parser.parse_args(["dataset", "report", "tile-1", "--learning-curve"])
    assert args.learning_curve is True and args.action == "report"
    curve = {"classes": {"scratch": {
        "sizes": [10, 20, 40], "errors": [0.5, 0.4, 0.3], "train_examples": 40, "val_examples": 9,
        "metric": "miss rate", "predicted_error_at_double": 0.22, "predicted_gain_from_doubling": 0.08,
        "notes": [],
    }}}  # fmt: skip
    text = cmd_dataset._summary("report", {
        "version": "tile-1", "images": 63, "blocking": False, "findings": [],
        "seeded_holdout": {"parts": 15, "holdout_parts": 50, "images": 15, "by_class": {"crack": 15}},
        "learning_curve": curve,
    })  # fmt: skip
    assert "seeded known-defect parts in the holdout: 15 of 50" in text
    assert "scratch: 40 train / 9 val examples, miss rate 0.300 -> 0.220 at 80 examples (gain 0.080)" in text
