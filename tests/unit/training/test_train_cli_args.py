"""`linesight train`: bad arguments, settings, gate files and datasets exit 2 before any server is
contacted; the chart's training Job arguments are ones the command accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from linesight.cli import cmd_train
from linesight.cli.main import COMMAND_MODULES, build_parser, main
from linesight.training.app.trainer import dataset_version_of

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every LINESIGHT_* setting cleared; the stack must never be reached in these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("LINESIGHT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LINESIGHT_STATE_DIR", str(tmp_path / "state"))

    async def forbidden(*_a: Any, **_k: Any) -> None:
        raise AssertionError("train_once must not run for invalid input")

    monkeypatch.setattr("linesight.training.service.train_once", forbidden)
    monkeypatch.setattr(cmd_train, "configure_logging", lambda *a, **k: None)


def _dataset(root: Path, rows: list[str], files: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.csv").write_text("image,label\n" + "".join(r + "\n" for r in rows))
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_train_is_a_linesight_command() -> None:
    assert "linesight.cli.cmd_train" in COMMAND_MODULES
    args = build_parser().parse_args(["train", "--dataset", "d", "--max-good", "3", "--max-per-class", "2"])
    assert args.func is cmd_train.run and (args.max_good, args.max_per_class, args.seed) == (3, 2, 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],  # neither --dataset nor --from-labels
        ["train", "--dataset", "d", "--from-labels"],
        ["train", "--from-labels", "--max-good", "-1"],
        ["train", "--from-labels", "--max-per-class", "many"],
        ["train", "--from-labels", "--seed", "x"],
        ["train", "--from-labels", "--input-size", "8"],
        ["train", "--version", "v1", "--dataset", "d"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "linesight train: error:" in capsys.readouterr().err


def test_service_jobs_refuse_a_folder_and_a_stray_base_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "d", "--incremental"]) == 2
    assert "give --version, not --dataset" in capsys.readouterr().err
    assert main(["train", "--from-labels", "--base-model", "m1"]) == 2
    assert "--base-model needs --incremental" in capsys.readouterr().err


def test_invalid_datasets_exit_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        tmp_path / "absent": "not a directory",
        _dataset(tmp_path / "empty", []): "no rows",
        _dataset(tmp_path / "missing", ["images/a.png,good", "images/b.png,scratch"]): "images/a.png",
        _dataset(tmp_path / "nolabel", ["a.png,"], ("a.png",)): "invalid dataset",
    }
    (tmp_path / "nomanifest").mkdir()
    cases[tmp_path / "nomanifest"] = "no manifest.csv"
    for path, expected in cases.items():
        assert main(["train", "--dataset", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("linesight train: ") and expected in err, (path, err)


def test_bad_settings_product_and_gate_file_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--from-labels", "--product", " "]) == 2
    assert "--product must not be empty" in capsys.readouterr().err

    state = tmp_path / "gate-state"
    state.mkdir()
    (state / "release_gate.yaml").write_text("min_recal: 0.9\n")  # a typo of min_recall
    assert main(["train", "--from-labels", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "release gate" in err and "unknown release gate keys" in err

    monkeypatch.setenv("LINESIGHT_NATS_PROT", "4222")
    assert main(["train", "--from-labels"]) == 2
    assert "LINESIGHT_NATS_PROT" in capsys.readouterr().err


def test_helm_training_job_args_are_accepted() -> None:
    """charts/linesight/values.yaml runs `linesight train` with training.run.args: they must parse."""
    values = yaml.safe_load((REPO / "charts" / "linesight" / "values.yaml").read_text())
    run = values["training"]["run"]
    assert run["command"] == ["linesight", "train"]
    args = build_parser().parse_args(["train", *run["args"]])
    assert args.func is cmd_train.run and (args.from_labels or args.dataset)


def test_capped_training_is_its_own_dataset_version(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", ["a.png,good"], ("a.png",))
    full = dataset_version_of(ds)
    assert full == dataset_version_of(ds)
    capped = dataset_version_of(ds, "max_good=1,max_per_class=None,seed=0")
    assert capped.startswith("ds-") and capped != full
    assert capped != dataset_version_of(ds, "max_good=1,max_per_class=None,seed=1")
