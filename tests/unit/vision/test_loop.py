"""The review loop's prequential protocol: second-half labels are never asked, reviews stay
within the budget, updates run every K labels, and the JSON has the promised fields."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from linesight.vision.components.scoring import Prediction
from linesight.vision.evaluation.loop import LoopOptions, run_loop, summarize
from linesight.vision.evaluation.report import format_table, render_html

N = 120


@dataclass
class _Report:
    seconds: float
    deferred: list[int]


class FakeLearner:
    """Scores frame i (encoded in its pixels) by a fixed table; learning from a good frame that it
    rejected lowers that frame's *type* of error: every good frame scoring above the threshold
    moves below it once 3 such frames were learned (a stand-in for a model that generalises)."""

    def __init__(self, scores: np.ndarray, truth: list[str]) -> None:
        self.scores = scores.copy()
        self.truth = truth
        self.learned: list[int] = []
        self.calls: list[int] = []

    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> list[Prediction]:
        heat = np.zeros((2, 2), np.float32)
        out = []
        for im in images:
            p = float(self.scores[int(im[0, 0])])
            out.append(Prediction(1.0, {"good": 1 - p, "crack": p}, heat, p, 0.5, novelty=0.1))
        return out

    def update_from_reviews(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> _Report:
        idx = [int(im[0, 0]) for im in images]
        self.calls.append(len(idx))
        self.learned.extend(idx)
        fixed_goods = [
            i for i, lab in zip(idx, labels, strict=True) if lab == "good" and self.scores[i] >= 0.5
        ]
        if len(fixed_goods) + sum(1 for i in self.learned if self.truth[i] == "good") >= 3:
            good = np.array([t == "good" for t in self.truth])
            self.scores[good & (self.scores >= 0.5)] = 0.3
        return _Report(0.01, [])


def _stream(seed: int = 0) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = ["crack" if rng.random() < 0.3 else "good" for _ in range(N)]
    scores = np.array([rng.uniform(0.6, 0.99) if t == "crack" else rng.uniform(0.01, 0.4) for t in truth])
    # a tenth of the good frames score like defects (a new session's bright tiles)
    goods = [i for i, t in enumerate(truth) if t == "good"]
    scores[goods[::10]] = rng.uniform(0.55, 0.95, len(goods[::10]))
    images = [np.full((8, 8), i, np.uint8) for i in range(N)]
    return images, truth, scores


def test_second_half_labels_are_never_asked_and_budget_holds() -> None:
    images, truth, scores = _stream()
    model = FakeLearner(scores, truth)
    opts = LoopOptions(review_budget=12, update_every=4, seed=3)
    asked: list[int] = []
    order = list(range(N))
    import random

    random.Random(3).shuffle(order)
    second = set(order[N // 2 :])

    def oracle(i: int) -> str:
        if i in second:  # the protocol forbids it: fail loudly instead of recording
            raise AssertionError(f"label of second-half frame {i} asked")
        asked.append(i)
        return truth[i]

    run = run_loop(model, images, oracle, opts)
    assert run.second_half == order[N // 2 :]
    assert len(asked) == 12 and asked == run.asked  # the budget is spent (fill at the end)
    assert not set(model.learned) & second  # the model never saw a second-half frame either
    assert all(c == 4 for c in model.calls[:-1]) and sum(model.calls) == len(asked)
    loop, details = summarize(run, truth, 12, ["crack"])
    assert set(loop) == {
        "review_budget",
        "labels_used",
        "updates",
        "update_seconds_max",
        "before",
        "after",
        "curve",
    }
    assert set(loop["before"]) == {"false_reject_rate", "escape_rate", "frames"}
    assert loop["before"]["frames"] == loop["after"]["frames"] == N - N // 2
    assert loop["labels_used"] == len(asked) and loop["updates"] == len(model.calls)
    assert loop["curve"][0]["labels_used"] == 0 and len(loop["curve"]) == loop["updates"] + 1
    # the fake learner fixes its false rejects once it has seen a few: the loop must pass that on
    assert loop["before"]["false_reject_rate"] > 0.0
    assert loop["after"]["false_reject_rate"] == 0.0
    assert sum(details["reasons"].values()) == len(asked)


def test_unlimited_budget_still_never_reaches_the_second_half() -> None:
    """With a budget and rate that would review every frame, only first-half frames are asked."""
    from linesight.vision.selection import SelectionConfig

    images, truth, scores = _stream(2)
    model = FakeLearner(scores, truth)
    routing = SelectionConfig(band_logit=50.0, rate_cap=1.0, burst=100, budget=None)
    opts = LoopOptions(review_budget=10_000, update_every=1, seed=5, selection=routing)
    run = run_loop(model, images, lambda i: truth[i], opts)
    assert sorted(run.asked) == sorted(run.order[: N // 2])
    assert model.calls == [1] * (N // 2)


def test_zero_budget_leaves_the_model_as_it_was_and_the_report_shows_the_loop() -> None:
    images, truth, scores = _stream(1)
    model = FakeLearner(scores, truth)
    run = run_loop(model, images, lambda i: truth[i], LoopOptions(review_budget=0, update_every=5))
    loop, _ = summarize(run, truth, 0)
    assert loop["labels_used"] == 0 and loop["updates"] == 0 and model.calls == []
    assert loop["after"] == loop["before"]
    result = {"loop": loop}
    assert "Review loop (budget 0" in format_table(result)
    model2 = FakeLearner(scores, truth)
    run2 = run_loop(model2, images, lambda i: truth[i], LoopOptions(review_budget=10, update_every=5))
    html = render_html({"loop": summarize(run2, truth, 10)[0]})
    assert "Review loop: second half" in html and "data:image/png;base64" in html


def test_eval_cli_loop_writes_the_loop_json_and_curve(tmp_path: Path) -> None:
    from tests.unit.vision.test_eval_cli import StandInModel, _run, make_dataset

    class Learning(StandInModel):
        updates: list[int]

        def update_from_reviews(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> _Report:
            self.updates = [*getattr(self, "updates", []), len(images)]
            return _Report(0.002, [])

    models: list[Learning] = []

    def factory(backbone: str, seed: int) -> Learning:
        models.append(Learning())
        return models[-1]

    root = make_dataset(tmp_path / "ds", n_good=20, per_class=8)
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    argv = ["--dataset", str(root), "--test-batches", "exp1", "--loop", "--review-budget", "6"]
    rc = _run([*argv, "--update-every", "2", "--json", str(out_json), "--html", str(out_html)], factory)
    assert rc == 0
    r = json.loads(out_json.read_text())
    loop = r["loop"]
    assert loop["review_budget"] == 6 and 0 < loop["labels_used"] <= 6
    assert loop["updates"] == len(models[0].updates) and all(n <= 2 for n in models[0].updates)
    assert loop["before"]["frames"] == loop["after"]["frames"] == 18  # 36 test frames, second half
    assert len(loop["curve"]) == loop["updates"] + 1
    assert "Review loop: second half" in out_html.read_text()
    with pytest.raises(SystemExit):
        _run([*argv, "--update-every", "0"], factory)


def test_fill_at_the_end_spends_the_budget_on_first_half_frames_only() -> None:
    """Where the reasons leave budget unspent, the end of the reviewable half spends it on the
    first half's frames not reviewed yet (rescored, least certain first); the second half is
    still never asked."""
    images, truth, scores = _stream(3)
    no_fill = LoopOptions(review_budget=40, fill_end=False)
    plain = run_loop(FakeLearner(scores, truth), images, lambda i: truth[i], no_fill)
    assert len(plain.asked) < 40  # the premise: the reasons alone leave budget over
    model = FakeLearner(scores, truth)
    asked: list[int] = []

    def oracle(i: int) -> str:
        asked.append(i)
        return truth[i]

    run = run_loop(model, images, oracle, LoopOptions(review_budget=40))  # fill at the end: default
    first = set(run.order[: N // 2])
    assert len(asked) == 40 and len(set(asked)) == 40 and set(asked) <= first
    assert asked[: len(plain.asked)] == plain.asked  # the stream's own routing is unchanged
    assert any(r.startswith("end:") for r in run.reasons)
    assert sum(model.calls) == 40
