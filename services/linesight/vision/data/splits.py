"""Leakage-safe train/test splits, training-side caps and a protected holdout.

Rules enforced here (they are what make an accuracy figure mean anything on the line):

* photos of one part never straddle a split (`assert_no_leakage` is called by every splitter);
* caps (``max_good``, ``max_per_class``) are sampled from the training side only, seeded;
* a protected holdout is chosen by a salted hash of the part id, so membership is deterministic,
  independent of ordering and dataset growth, and a training set can be checked against it.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from linesight.vision.data.manifest import GOOD, Sample

__all__ = [
    "HOLDOUT_SALT",
    "LeakageError",
    "Split",
    "SplitError",
    "assert_no_leakage",
    "cap_training",
    "check_not_holdout",
    "group_near_duplicates",
    "holdout_fraction_key",
    "is_holdout",
    "merge_part_groups",
    "protect_holdout",
    "split_by_batches",
    "split_by_group",
    "split_by_stations",
    "split_by_time",
]

HOLDOUT_SALT = "linesight-holdout-v1"


class SplitError(ValueError):
    """The split cannot be made as asked (unknown batch, empty side, bad fraction)."""


class LeakageError(SplitError):
    """The same part (or a holdout part) would be on both sides."""


@dataclass
class Split:
    """Train and test sides plus a human-readable description of how they were made."""

    train: list[Sample]
    test: list[Sample]
    description: str
    dropped: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert_no_leakage(self.train, self.test)


def assert_no_leakage(train: Iterable[Sample], test: Iterable[Sample], *, key: str = "part_id") -> None:
    """Raise LeakageError if any part (or image file) is on both sides."""
    train_l, test_l = list(train), list(test)
    shared = {getattr(s, key) for s in train_l} & {getattr(s, key) for s in test_l}
    if shared:
        shown = sorted(shared)[:5]
        raise LeakageError(f"{len(shared)} {key}(s) on both sides of the split, e.g. {shown}")
    files = {s.image for s in train_l} & {s.image for s in test_l}
    if files:
        raise LeakageError(f"{len(files)} image file(s) on both sides, e.g. {sorted(map(str, files))[:3]}")


def merge_part_groups(samples: Sequence[Sample], pairs: Iterable[tuple[Path, Path]]) -> list[Sample]:
    """Return samples whose part_id joins parts linked by (near-)duplicate image pairs.

    `pairs` holds image paths (e.g. from `find_duplicates`); linked parts get one part_id, so the
    splitters keep re-photographed parts on one side.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_image = {s.image: s.part_id for s in samples}
    for a, b in pairs:
        pa, pb = by_image.get(a), by_image.get(b)
        if pa is not None and pb is not None:
            ra, rb = find(pa), find(pb)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return [replace(s, part_id=find(s.part_id)) for s in samples]


def group_near_duplicates(
    samples: Sequence[Sample],
    *,
    max_hamming: int = 4,
    embeddings: bool = True,
    max_embedding_distance: float = 0.01,
) -> tuple[list[Sample], int]:
    """Merge the parts of near-duplicate images into one group before a split: (samples with
    merged part ids, number of links that joined two different parts).

    A re-shot part (new frame id, same tile) otherwise lands on both sides and scores itself.
    Links come from the hygiene checks: exact and perceptual-hash duplicates (dHash and pHash
    within `max_hamming` bits) and, with `embeddings`, backbone-embedding neighbours within
    `max_embedding_distance` cosine distance (slight shifts and crops the hashes miss).
    """
    from linesight.vision.data.hygiene import embedding_near_duplicates, find_duplicates

    if len(samples) < 2:
        return list(samples), 0
    dup = find_duplicates(samples, max_distance=max_hamming)
    pairs: list[tuple[Path, Path]] = [(g[0], x) for g in dup.exact for x in g[1:]]
    pairs += [(n.a, n.b) for n in dup.near]
    if embeddings:
        pairs += [(e.a, e.b) for e in embedding_near_duplicates(samples, max_distance=max_embedding_distance)]
    part_of = {s.image: s.part_id for s in samples}
    links = sum(1 for a, b in pairs if part_of.get(a) != part_of.get(b))
    return (merge_part_groups(samples, pairs) if links else list(samples)), links


def _drop_straddling(train: list[Sample], test: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    test_parts = {s.part_id for s in test}
    dropped = [s for s in train if s.part_id in test_parts]
    if dropped:
        warnings.warn(
            f"{len(dropped)} training image(s) of parts also in the test side were dropped from training",
            stacklevel=3,
        )
    return [s for s in train if s.part_id not in test_parts], dropped


def _split_by_attr(samples: Sequence[Sample], attr: str, values: Sequence[str]) -> Split:
    wanted = [v.strip() for v in values if v.strip()]
    if not wanted:
        raise SplitError(f"no test {attr} given")
    known = sorted({getattr(s, attr) for s in samples})
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise SplitError(f"unknown {attr}(es) {unknown}; the dataset has {known}")
    test = [s for s in samples if getattr(s, attr) in wanted]
    train, dropped = _drop_straddling([s for s in samples if getattr(s, attr) not in wanted], test)
    if not train:
        raise SplitError(f"nothing left for training after holding out {attr} {wanted}")
    return Split(train, test, f"test {attr} = {','.join(wanted)}", dropped)


def split_by_batches(samples: Sequence[Sample], test_batches: Sequence[str]) -> Split:
    """Time-aware split: whole acquisition sessions/batches go to the test side.

    Parts that also appear in a training batch are dropped from training (with a warning).
    """
    return _split_by_attr(samples, "batch", test_batches)


def split_by_stations(samples: Sequence[Sample], test_stations: Sequence[str]) -> Split:
    """Station-transfer split: does the model survive a different camera/line?"""
    return _split_by_attr(samples, "station", test_stations)


def _group_label(members: Sequence[Sample]) -> str:
    """A part's stratum: its most common defect label, good only if all photos are good."""
    defects = [s.label for s in members if s.label != GOOD]
    if not defects:
        return GOOD
    return max(sorted(set(defects)), key=defects.count)


def split_by_group(
    samples: Sequence[Sample],
    test_fraction: float,
    *,
    group_by: str = "part_id",
    seed: int = 0,
) -> Split:
    """Stratified group split: about `test_fraction` of each class's groups go to test.

    Classes with a single group stay in training (a warning says they cannot be tested).
    """
    if not 0.0 < test_fraction < 1.0:
        raise SplitError(f"test fraction must be in (0, 1), got {test_fraction}")
    if group_by not in ("part_id", "batch", "station"):
        raise SplitError(f"cannot group by {group_by!r}; use part_id, batch or station")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[getattr(s, group_by)].append(s)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, members in sorted(groups.items()):
        strata[_group_label(members)].append(g)
    rng = random.Random(seed)
    test_groups: set[str] = set()
    untestable = []
    for label, gs in sorted(strata.items()):
        if len(gs) < 2:
            untestable.append(label)
            continue
        rng.shuffle(gs)
        n = min(len(gs) - 1, max(1, round(test_fraction * len(gs))))
        test_groups.update(gs[:n])
    if untestable:
        warnings.warn(f"classes with one {group_by} stay in training only: {untestable}", stacklevel=2)
    train = [s for s in samples if getattr(s, group_by) not in test_groups]
    test = [s for s in samples if getattr(s, group_by) in test_groups]
    if not test:
        raise SplitError("the test side is empty")
    return Split(
        train, test, f"stratified group split by {group_by}, test fraction {test_fraction}, seed {seed}"
    )


def split_by_time(
    samples: Sequence[Sample], *, cutoff: datetime | None = None, test_fraction: float = 0.2
) -> Split:
    """Train on the past, test on the future: by `cutoff`, or the latest `test_fraction` of parts.

    A part is placed by its earliest photo, so its later photos follow it.
    """
    undated = [s for s in samples if s.captured_at is None]
    if undated:
        raise SplitError(f"{len(undated)} sample(s) without captured_at, e.g. {undated[0].image}")
    first: dict[str, datetime] = {}
    for s in samples:
        assert s.captured_at is not None
        if s.part_id not in first or s.captured_at < first[s.part_id]:
            first[s.part_id] = s.captured_at
    try:
        order = sorted(first, key=lambda p: (first[p], p))
    except TypeError as exc:
        raise SplitError("captured_at mixes timezone-aware and naive timestamps") from exc
    if cutoff is not None:
        test_parts = {p for p in order if first[p] >= cutoff}
        desc = f"test = parts first seen at or after {cutoff.isoformat()}"
    else:
        if not 0.0 < test_fraction < 1.0:
            raise SplitError(f"test fraction must be in (0, 1), got {test_fraction}")
        n = max(1, round(test_fraction * len(order)))
        test_parts = set(order[-n:])
        desc = f"test = latest {test_fraction:.0%} of parts by time"
    train = [s for s in samples if s.part_id not in test_parts]
    test = [s for s in samples if s.part_id in test_parts]
    if not train or not test:
        raise SplitError("time split leaves one side empty")
    return Split(train, test, desc)


def cap_training(
    train: Sequence[Sample],
    *,
    max_good: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> list[Sample]:
    """Seeded subsample of the training side (never touch the test side with this).

    Sampling is by image within each class, in manifest-independent (sorted path) order, so the
    same seed gives the same images whatever the manifest's row order.
    """
    for name, v in (("max_good", max_good), ("max_per_class", max_per_class)):
        if v is not None and v < 0:
            raise SplitError(f"{name} must be >= 0, got {v}")
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(train, key=lambda s: str(s.image)):
        by_label[s.label].append(s)
    rng = random.Random(seed)
    keep: set[object] = set()
    for label, members in sorted(by_label.items()):
        cap = max_good if label == GOOD else max_per_class
        chosen = members if cap is None or len(members) <= cap else rng.sample(members, cap)
        keep.update(s.image for s in chosen)
    return [s for s in train if s.image in keep]


def holdout_fraction_key(part_id: str, salt: str = HOLDOUT_SALT) -> float:
    """Deterministic value in [0, 1) per part: the same on every machine and every run."""
    digest = hashlib.sha256(f"{salt}\x00{part_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_holdout(part_id: str, fraction: float, salt: str = HOLDOUT_SALT) -> bool:
    """Is this part in the protected holdout? Growing the dataset never moves a part in or out."""
    return holdout_fraction_key(part_id, salt) < fraction


def protect_holdout(
    samples: Sequence[Sample],
    fraction: float = 0.1,
    *,
    salt: str = HOLDOUT_SALT,
) -> tuple[list[Sample], list[Sample]]:
    """Return (working, holdout): the holdout is for the final check before release only."""
    if not 0.0 <= fraction < 1.0:
        raise SplitError(f"holdout fraction must be in [0, 1), got {fraction}")
    working = [s for s in samples if not is_holdout(s.part_id, fraction, salt)]
    holdout = [s for s in samples if is_holdout(s.part_id, fraction, salt)]
    return working, holdout


def check_not_holdout(train: Iterable[Sample], fraction: float, *, salt: str = HOLDOUT_SALT) -> None:
    """Raise LeakageError if a training set contains protected holdout parts."""
    bad = sorted({s.part_id for s in train if is_holdout(s.part_id, fraction, salt)})
    if bad:
        raise LeakageError(f"{len(bad)} protected holdout part(s) in the training set, e.g. {bad[:5]}")
