"""Dataset versions: immutable, recorded, reported, and a protected holdout nobody trains on.

A version is built from a manifest folder (an import) or from the confirmed labels training has
ingested. Write path: every image (and mask) is uploaded content-addressed to the `datasets`
bucket first (so the version survives its source folder; a retry re-uploads nothing), then the
manifest JSON to `datasets/manifests/<product>/<version>.json` and the hygiene page to
`reports/datasets/<version>.html` (same bytes on a retry), then one transaction inserts the
PostgreSQL record and publishes DatasetVersionCreated before committing. If S3 fails nothing is
recorded (uploaded objects are content-addressed and harmless); if the database or the bus
fails the transaction rolls back and the caller sees the error. Identical content is not a new
version: the existing one is returned with `created=False`.

The version id is `<product>-<first 12 hex of the content hash>`: what it holds, not when.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from linesight.common import subjects
from linesight.common.audit import AuditEntry
from linesight.common.events import new_meta
from linesight.common.identity.model import Principal, Role
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.training.app import hygiene_report, learning
from linesight.training.app.jobs import NotFoundError, PromotionError
from linesight.training.app.trainer import SEEDED_TRUE, is_seeded
from linesight.training.store import datasets as repo
from linesight.training.store import registry, taxonomies
from linesight.vision.data.imageio import ImageError, read_header
from linesight.vision.data.manifest import GOOD, KNOWN_COLUMNS, ManifestError, Sample, load_manifest
from linesight.vision.data.splits import holdout_fraction_key, merge_part_groups
from linesight.vision.taxonomy import Taxonomy

log = logging.getLogger(__name__)

BUCKET_DATASETS = "datasets"
BUCKET_REPORTS = "reports"
HOLDOUT_FRACTION = 0.1
VAL_FRACTION = 0.2
TRAIN, VAL, HOLDOUT = "train", "val", "holdout"
SPLITS = (TRAIN, VAL, HOLDOUT)
LEARNING_CURVE = "learning_curve"  # the report's on-demand entry


class DatasetStore(Protocol):
    def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...

    def aput_content_addressed(
        self, bucket: str, data: bytes, suffix: str = ..., content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...

    def aget_bytes(self, bucket: str, key: str) -> Awaitable[bytes]: ...


class ObjectReader(Protocol):
    def aget_bytes(self, bucket: str, key: str) -> Awaitable[bytes]: ...


class Trail(Protocol):
    def append(self, entry: AuditEntry) -> Awaitable[Any]: ...


class DatasetImportError(ValueError):
    """The manifest has rows that cannot be imported; `issues` lists each with its row and reason."""

    def __init__(self, source: str, issues: list[str]) -> None:
        self.issues = issues
        shown = "; ".join(issues[:20]) + (f"; and {len(issues) - 20} more" if len(issues) > 20 else "")
        super().__init__(f"{source}: {len(issues)} problem(s): {shown}")


class LabelsNotReadyError(DatasetImportError):
    """The confirmed labels cannot make a version yet (none, or some lack an image or a part id):
    the labels' state, not the request, is what has to change."""


class CurveUnavailableError(ValueError):
    """The version cannot have a learning curve (no val split, a single class in train)."""


class UnknownDatasetError(NotFoundError):
    """No dataset version with this id."""

    noun = "dataset version"


class DatasetBlockedError(PromotionError):
    """A model's dataset version has an unwaived blocking hygiene finding."""


class HoldoutRefusedError(PermissionError):
    """The protected holdout was asked for without a named purpose and reader."""


@dataclass
class Inspected:
    """A manifest read row by row: samples, per-row severity, remarks that did not stop it."""

    samples: list[Sample]
    severity_of: dict[Path, str]
    given_split: dict[Path, str]
    notes: list[str] = field(default_factory=list)


def inspect_manifest(root: Path, classes: set[str] | None) -> Inspected:
    """Check every row before anything is uploaded; DatasetImportError names each bad row.

    Rejected: a missing image or mask, a 0-byte or unreadable image, a label the pinned taxonomy
    does not know (when one is pinned), a row listing an image already listed, a `split` value
    other than train/val/holdout. Accepted with a note: a BOM, CRLF line ends, images of a size
    other than the most common one (each named). The manifest's own checks (boxes, timestamps)
    run last (load_manifest)."""
    path = root / "manifest.csv"
    if not path.is_file():
        raise DatasetImportError(str(root), ["no manifest.csv in the folder"])
    raw = path.read_bytes()
    notes: list[str] = []
    if raw.startswith(b"\xef\xbb\xbf"):
        notes.append("manifest.csv starts with a UTF-8 BOM (ignored)")
    if b"\r\n" in raw:
        notes.append("manifest.csv has CRLF line ends (read as lines)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetImportError(str(path), [f"not UTF-8 text at byte {exc.start}"]) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    issues: list[str] = []
    if "image" not in header or "label" not in header:
        raise DatasetImportError(str(path), [f"row 1: header {header} lacks image and/or label"])
    seen: dict[str, int] = {}
    sizes: dict[int, tuple[int, int]] = {}
    severity_by_row: dict[str, str] = {}
    split_by_row: dict[str, str] = {}
    for row_no, rec in enumerate(reader, start=2):
        rec = {k: (v or "").strip() for k, v in rec.items() if k is not None}
        image = rec.get("image", "")
        label = rec.get("label", "")
        where = f"row {row_no} ({image or 'no image'})"
        if not image or not label:
            issues.append(f"{where}: empty image or label")
            continue
        if image in seen:
            issues.append(f"{where}: duplicate row, image already listed in row {seen[image]}")
            continue
        seen[image] = row_no
        label = GOOD if label.lower() == GOOD else label
        if classes is not None and label != GOOD and label not in classes:
            issues.append(f"{where}: unknown class {label!r}; the pinned taxonomy has {sorted(classes)}")
        split = rec.get("split", "")
        if split and split not in SPLITS:
            issues.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        seeded = rec.get("seeded", "").lower()
        if seeded and seeded not in (*SEEDED_TRUE, "0", "false", "no", "n"):
            issues.append(f"{where}: seeded {rec.get('seeded')!r} is not yes/no")
        elif seeded in SEEDED_TRUE and label == GOOD:
            issues.append(f"{where}: seeded marks a known-defect part, but the label is good")
        elif seeded in SEEDED_TRUE and split and split != HOLDOUT:
            issues.append(f"{where}: a seeded known-defect part belongs to the holdout, not {split!r}")
        split_by_row[image] = split
        severity_by_row[image] = rec.get("severity", "")
        file = root / image
        if not file.is_file():
            issues.append(f"{where}: image file missing")
            continue
        if rec.get("mask") and not (root / rec["mask"]).is_file():
            issues.append(f"{where}: mask file {rec['mask']!r} missing")
        data = file.read_bytes()
        if not data:
            issues.append(f"{where}: image is 0 bytes")
            continue
        try:
            head = read_header(data, source=image)
        except ImageError as exc:
            issues.append(f"{where}: unreadable image ({exc})")
            continue
        sizes[row_no] = (head.width, head.height)
    if sizes:
        common = Counter(sizes.values()).most_common(1)[0][0]
        notes += [f"row {r}: image is {w}x{h}, most are {common[0]}x{common[1]}"
                  for r, (w, h) in sorted(sizes.items()) if (w, h) != common]  # fmt: skip
    if issues:
        raise DatasetImportError(str(path), issues)
    unknown = [c for c in header if c not in (*KNOWN_COLUMNS, "split", "severity", "seeded")]
    if unknown:
        notes.append(f"columns kept as metadata: {unknown}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            samples = load_manifest(root, unknown_columns="ignore")
    except ManifestError as exc:
        raise DatasetImportError(str(path), [str(exc)]) from None
    notes += [str(w.message) for w in caught]
    rel = {s.image: s.image.relative_to(root).as_posix() for s in samples}
    return Inspected(
        samples,
        {s.image: severity_by_row.get(rel[s.image], "") for s in samples},
        {s.image: split_by_row.get(rel[s.image], "") for s in samples if split_by_row.get(rel[s.image])},
        notes,
    )


def _stratum(members: Sequence[Sample]) -> str:
    defects = sorted(s.label for s in members if s.label != GOOD)
    return max(set(defects), key=defects.count) if defects else GOOD


def assign_splits(
    samples: Sequence[Sample], links: Iterable[tuple[Path, Path]] = ()
) -> tuple[dict[Path, str], str]:
    """Train / val / protected holdout, grouped by part (a part's photos stay together).

    `links` are pairs of images that show the same part under different part ids (exact,
    perceptual-hash and embedding duplicates: DuplicateEvidence.links): their parts are merged
    into one group first, so a re-shot part never lands on both sides of our own split and the
    report's "near duplicate across splits" finding is never of our making. The recorded part ids
    are not changed; only the grouping is.

    With three or more batches it is time-aware: the latest batch (by earliest capture time,
    else by name) is the holdout, the one before it validation, the rest training; a group is
    placed by its earliest batch. Otherwise each class's groups (a group's class: its most common
    defect) are ranked by a salted hash of the group's (smallest) part id, the lowest 10 % holdout
    and the next 20 % validation: stratified, deterministic, and a part never moves as the
    dataset grows unless a new duplicate links it to another.

    Known-defect parts marked `seeded` (the practice of seeding ~15 known-bad parts among ~50 in
    the final check) always go to the holdout, whatever the policy; they are reported apart.
    """
    pairs = list(links)
    grouped = merge_part_groups(samples, pairs) if pairs else list(samples)
    group_of = {s.image: g.part_id for s, g in zip(samples, grouped, strict=True)}
    part_of = {s.image: s.part_id for s in samples}
    merged = sum(1 for a, b in pairs if a in part_of and b in part_of and part_of[a] != part_of[b])
    parts: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        parts[group_of[s.image]].append(s)
    batches = sorted({s.batch for s in samples if s.batch})
    if len(batches) >= 3:
        first_seen: dict[str, Any] = {}
        for b in batches:
            times = [s.captured_at for s in samples if s.batch == b and s.captured_at is not None]
            first_seen[b] = (min(times).isoformat() if times else "", b)
        order = sorted(batches, key=lambda b: first_seen[b])
        rank = {b: i for i, b in enumerate(order)}
        split_of_part: dict[str, str] = {}
        for p, members in parts.items():
            r = min(rank.get(m.batch, 0) for m in members)
            split_of_part[p] = HOLDOUT if r == len(order) - 1 else VAL if r == len(order) - 2 else TRAIN
        policy = (
            f"time-aware by batch: train {order[:-2]}, val {order[-2]}, holdout {order[-1]}; grouped by part"
        )
    else:
        strata: dict[str, list[str]] = defaultdict(list)
        for p, members in parts.items():
            strata[_stratum(members)].append(p)
        split_of_part = {}
        for members_p in strata.values():
            ranked = sorted(members_p, key=lambda p: (holdout_fraction_key(p), p))
            n_hold = round(HOLDOUT_FRACTION * len(ranked))
            n_val = round(VAL_FRACTION * len(ranked))
            for i, p in enumerate(ranked):
                split_of_part[p] = HOLDOUT if i < n_hold else VAL if i < n_hold + n_val else TRAIN
        policy = (f"stratified by class, grouped by part, salted part hash: holdout {HOLDOUT_FRACTION:.0%}, "
                  f"val {VAL_FRACTION:.0%}")  # fmt: skip
    if merged:
        policy += f"; {merged} duplicate link(s) joined parts into one group"
    seeded_groups = {group_of[s.image] for s in samples if is_seeded(s)}
    for g in seeded_groups:
        split_of_part[g] = HOLDOUT
    if seeded_groups:
        policy += f"; {len(seeded_groups)} seeded known-defect part group(s) in the holdout"
    return {s.image: split_of_part[group_of[s.image]] for s in samples}, policy


def seeded_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The seeded known-defect parts of a version (all in its holdout): how many, of which class."""
    seeded = [r for r in rows if r.get("seeded")]
    return {
        "parts": len({r["part_id"] for r in seeded}),
        "images": len(seeded),
        "by_class": dict(sorted(Counter(r["label"] for r in seeded).items())),
        "holdout_parts": len({r["part_id"] for r in rows if r["split"] == HOLDOUT}),
    }


def counts_of(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per class, severity, station, batch and split: what a version's record shows."""
    out: dict[str, dict[str, int]] = {}
    for key, col in (("class", "label"), ("severity", "severity"), ("station", "station"),
                     ("batch", "batch"), ("split", "split")):  # fmt: skip
        out[key] = dict(sorted(Counter(str(r.get(col, "")) or "unspecified" for r in rows).items()))
    return out


def content_hash(rows: Sequence[dict[str, Any]]) -> str:
    """sha256 of the canonical manifest rows (sorted by image hash): same content, same hash."""
    canon = json.dumps(
        sorted(rows, key=lambda r: (r["sha256"], r["name"])), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def approver_name(principal: Principal) -> str:
    if principal.name and principal.name != principal.subject:
        return f"{principal.name} <{principal.subject}>"
    return principal.subject


class DatasetApp:
    """Dataset version use cases over training's schema, the object store and the bus."""

    def __init__(
        self, db: ConnectionSource, bus: EventPublisher, store: DatasetStore, trail: Trail, *, plant: str
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.trail = trail
        self.plant = plant

    async def _taxonomy(self, product: str) -> Taxonomy | None:
        async with self.db.connection() as conn:
            found = await taxonomies.newest(conn, product)
        return None if found is None else Taxonomy.from_yaml(found[1], source=f"{product} v{found[0]}")

    async def import_directory(
        self, root: Path, product: str, who: str, reason: str = "", parent: str = ""
    ) -> tuple[repo.DatasetRecord, bool]:
        """A version from a manifest folder (already confined by the caller); (record, created)."""
        taxonomy = await self._taxonomy(product)
        classes = set(taxonomy.class_names) if taxonomy is not None else None
        inspected = await asyncio.to_thread(inspect_manifest, root, classes)
        if taxonomy is None:
            inspected.notes.append(f"no published taxonomy for {product!r}: class names not checked")
        severity = dict(inspected.severity_of)
        if taxonomy is not None:
            for s in inspected.samples:
                if not severity.get(s.image) and s.label != GOOD and taxonomy.has_class(s.label):
                    severity[s.image] = taxonomy.get(s.label).default_severity
        return await self._create(
            inspected, root, product, who, reason, parent, "import",
            taxonomy.version if taxonomy else "",
        )  # fmt: skip

    async def create_from_labels(
        self, product: str, who: str, reason: str = "", parent: str = ""
    ) -> tuple[repo.DatasetRecord, bool]:
        """A version from the confirmed labels of `product`. The part is the capture's part id;
        a label whose frame had none is refused (listed), never given its frame id as a part."""
        async with self.db.connection() as conn:
            rows = [
                r for r in await registry.confirmed_labels(conn) if not product or r.product in ("", product)
            ]
        if not rows:
            raise LabelsNotReadyError(f"labels of {product!r}", ["no confirmed labels yet"])
        bad = [f"frame {r.frame_id}: no image stored" for r in rows if not (r.image_bucket and r.image_key)]
        bad += [f"frame {r.frame_id}: no part id in its capture metadata" for r in rows if not r.part_id]
        if bad:
            raise LabelsNotReadyError(f"labels of {product!r}", bad)
        taxonomy = await self._taxonomy(product)
        with tempfile.TemporaryDirectory(prefix="ls-dsv-") as tmp:
            root = Path(tmp)
            (root / "images").mkdir()
            lines = []
            for r in rows:
                data = await self.store.aget_bytes(r.image_bucket, r.image_key)
                name = f"images/{r.frame_id}{Path(r.image_key).suffix or '.png'}"
                await asyncio.to_thread((root / name).write_bytes, data)
                lines.append({"image": name, "label": r.label, "part_id": r.part_id, "station": r.station,
                              "severity": r.severity})  # fmt: skip
            with (root / "manifest.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["image", "label", "part_id", "station", "severity"])
                w.writeheader()
                w.writerows(lines)
            inspected = await asyncio.to_thread(inspect_manifest, root, None)
            return await self._create(
                inspected, root, product, who, reason, parent, "labels",
                taxonomy.version if taxonomy else "",
            )  # fmt: skip

    async def _create(
        self, inspected: Inspected, root: Path, product: str, who: str, reason: str, parent: str,
        source: str, taxonomy_version: str,
    ) -> tuple[repo.DatasetRecord, bool]:  # fmt: skip
        if parent:
            await self.get(parent)
        samples = inspected.samples
        # Duplicates first: the split groups by them, the report names them (computed once).
        duplicates = await asyncio.to_thread(hygiene_report.find_duplicate_evidence, samples)
        split_of, policy = assign_splits(samples, duplicates.links())
        if inspected.given_split:
            split_of.update(inspected.given_split)
            policy = "splits as given in the manifest's split column (unlisted rows: " + policy + ")"
        rows: list[dict[str, Any]] = []
        for s in samples:
            data = await asyncio.to_thread(s.image.read_bytes)
            ref = await self.store.aput_content_addressed(
                BUCKET_DATASETS, data, s.image.suffix.lower() or ".png", "application/octet-stream"
            )
            mask_key = ""
            if s.mask is not None:
                mref = await self.store.aput_content_addressed(
                    BUCKET_DATASETS, await asyncio.to_thread(s.mask.read_bytes), ".png", "image/png"
                )
                mask_key = mref.key
            rows.append({
                "name": s.image.relative_to(root).as_posix(), "sha256": ref.sha256, "key": ref.key,
                "mask_key": mask_key, "label": s.label, "severity": inspected.severity_of.get(s.image, ""),
                "part_id": s.part_id, "batch": s.batch, "station": s.station,
                "captured_at": s.captured_at.isoformat() if s.captured_at else "",
                "boxes": [list(b) for b in s.boxes], "extra": dict(s.extra), "split": split_of[s.image],
                "seeded": is_seeded(s),
            })  # fmt: skip
        digest = content_hash(rows)
        async with self.db.connection() as conn:
            existing = await repo.find_by_content(conn, product, digest)
        if existing is not None:
            return existing, False
        version = f"{product}-{digest[:12]}"
        report, stats = await asyncio.to_thread(
            hygiene_report.build_report, samples, split_of,
            name_of=lambda p: p.relative_to(root).as_posix(), severity_of=inspected.severity_of,
            duplicates=duplicates,
        )  # fmt: skip
        report["input_notes"] = inspected.notes
        report["seeded_holdout"] = seeded_summary(rows)
        page = await asyncio.to_thread(hygiene_report.render_html, version, product, report, samples, stats)
        manifest = {
            "version": version, "product": product, "content_hash": digest, "source": source,
            "taxonomy_version": taxonomy_version, "parent_version": parent or None, "split_policy": policy,
            "rows": rows,
        }  # fmt: skip
        mkey = f"manifests/{product}/{version}.json"
        ref = await self.store.aput_bytes(
            BUCKET_DATASETS, mkey, json.dumps(manifest, sort_keys=True).encode(), "application/json"
        )
        hkey = f"datasets/{version}.html"
        await self.store.aput_bytes(BUCKET_REPORTS, hkey, page.encode(), "text/html")
        counts = counts_of(rows)
        row = repo.DatasetRow(
            version=version, product=product, content_hash=digest, source=source,
            manifest_bucket=ref.bucket, manifest_key=ref.key, images=len(rows), counts=counts,
            taxonomy_version=taxonomy_version, parent_version=parent or None, created_by=who,
            reason=reason, split_policy=policy, input_notes=inspected.notes, report=report,
            report_html_key=hkey, blocking=bool(report["blocking"]),
        )  # fmt: skip
        meta = new_meta("training", correlation_id=version)
        meta.event_id = f"dataset:{version}"
        event = events_pb2.DatasetVersionCreated(
            meta=meta, dataset_version=version, product=product, manifest=ref,
            class_counts=counts["class"], split_policy=policy, holdout_id=f"{version}:{HOLDOUT}",
            content_hash=digest, taxonomy_version=taxonomy_version, parent_version=parent,
            created_by=who, reason=reason, images=len(rows), blocking=row.blocking,
        )  # fmt: skip
        async with self.db.connection() as conn, conn.transaction():
            inserted = await repo.insert_version(conn, row)
            if inserted:
                await self.bus.publish(subjects.plant_subject(self.plant, subjects.DATASET_CREATED), event)
            record = await repo.find_by_content(conn, product, digest)
        assert record is not None  # inserted now or by a concurrent identical import
        log.info("dataset %s (%s images, %s) created by %s", version, len(rows), source, who)
        return record, inserted

    async def get(self, version: str) -> repo.DatasetRecord:
        async with self.db.connection() as conn:
            found = await repo.get_version(conn, version)
        if found is None:
            raise UnknownDatasetError(version)
        return found

    async def list_versions(self, product: str = "") -> list[repo.DatasetRecord]:
        async with self.db.connection() as conn:
            return await repo.list_versions(conn, product)

    async def manifest(self, version: str) -> dict[str, Any]:
        rec = await self.get(version)
        data: dict[str, Any] = json.loads(await self.store.aget_bytes(rec.manifest_bucket, rec.manifest_key))
        return data

    async def diff(self, base: str, other: str) -> dict[str, Any]:
        """Images added, removed and relabelled between two versions (by content hash)."""
        a, b = await self.manifest(base), await self.manifest(other)
        la = {r["sha256"]: r for r in a["rows"]}
        lb = {r["sha256"]: r for r in b["rows"]}
        added = sorted(set(lb) - set(la))
        removed = sorted(set(la) - set(lb))
        relabelled = sorted(h for h in set(la) & set(lb) if la[h]["label"] != lb[h]["label"])
        ca, cb = Counter(r["label"] for r in a["rows"]), Counter(r["label"] for r in b["rows"])
        examples = [f"+ {lb[h]['name']} ({lb[h]['label']})" for h in added[:5]]
        examples += [f"- {la[h]['name']} ({la[h]['label']})" for h in removed[:5]]
        examples += [f"~ {lb[h]['name']}: {la[h]['label']} -> {lb[h]['label']}" for h in relabelled[:5]]
        return {
            "added": len(added), "removed": len(removed), "relabelled": len(relabelled),
            "counts_delta": {c: cb[c] - ca[c] for c in sorted(set(ca) | set(cb)) if cb[c] != ca[c]},
            "examples": examples,
        }  # fmt: skip

    async def report(
        self, version: str, *, html: bool = False, learning_curve: bool = False
    ) -> tuple[repo.DatasetRecord, dict[str, Any], str]:
        """(record, report with waivers applied, HTML page or ''). `learning_curve`: compute the
        per-class learning curve first when the version has none yet (kept with the version);
        once there, it is in the report and drawn on the page."""
        if learning_curve:
            await self.learning_curve(version)
        rec = await self.get(version)
        async with self.db.connection() as conn:
            waived = {w.kind: w for w in await repo.waivers(conn, version)}
        report = dict(rec.report)
        report["waivers"] = [
            {"kind": w.kind, "by": w.waived_by, "reason": w.reason, "at": w.waived_at.isoformat()}
            for w in waived.values()
        ]
        report["blocking"] = rec.blocking
        page = ""
        if html and rec.report_html_key:
            page = (await self.store.aget_bytes(BUCKET_REPORTS, rec.report_html_key)).decode()
            if report.get(LEARNING_CURVE):
                page = await asyncio.to_thread(learning.with_section, page, report[LEARNING_CURVE])
        return rec, report, page

    async def learning_curve(self, version: str) -> dict[str, Any]:
        """The version's per-class learning curve (learning.py): computed from its train and val
        rows once, then kept in its report. ValueError when the version cannot have one (no val
        split, a single class): CurveUnavailableError."""
        rec = await self.get(version)
        if rec.report.get(LEARNING_CURVE):
            found: dict[str, Any] = rec.report[LEARNING_CURVE]
            return found
        rows = await self.training_rows(version)
        with tempfile.TemporaryDirectory(prefix="ls-curve-") as tmp:
            samples: list[Sample] = []
            split_of: dict[Path, str] = {}
            for r in rows:
                path = Path(tmp) / f"{r['sha256'][:24]}{Path(r['name']).suffix or '.png'}"
                await asyncio.to_thread(
                    path.write_bytes, await self.store.aget_bytes(BUCKET_DATASETS, r["key"])
                )
                samples.append(Sample(path, r["label"], None, r["part_id"], r.get("batch", ""),
                                      r.get("station", ""), None, ()))  # fmt: skip
                split_of[path] = r["split"]
            t0 = time.perf_counter()
            try:
                curve = await asyncio.to_thread(learning.class_learning_curves, samples, split_of)
            except ValueError as exc:
                raise CurveUnavailableError(f"dataset {version}: {exc}") from exc
        async with self.db.connection() as conn, conn.transaction():
            await repo.set_report_entry(conn, version, LEARNING_CURVE, curve)
        log.info("learning curve of %s computed in %.1f s", version, time.perf_counter() - t0)
        return curve

    async def waive(self, version: str, kind: str, principal: Principal, reason: str) -> repo.DatasetRecord:
        """A QA owner accepts one blocking finding with a reason: stored, audited, and the version
        stops blocking once every blocking finding is waived. ValueError for a kind that is not a
        blocking finding of this version or an empty reason."""
        reason = reason.strip()
        if not reason:
            raise ValueError("a waiver needs a reason")
        rec = await self.get(version)
        blocking_kinds = {
            f["kind"] for f in rec.report.get("findings", []) if f["severity"] == hygiene_report.BLOCKING
        }
        if kind not in blocking_kinds:
            raise ValueError(
                f"{kind!r} is not a blocking finding of {version}; blocking: {sorted(blocking_kinds)}"
            )
        who = approver_name(principal)
        async with self.db.connection() as conn, conn.transaction():
            await repo.add_waiver(conn, version, kind, who, reason)
            waived = {w.kind for w in await repo.waivers(conn, version)}
            await repo.set_blocking(conn, version, bool(blocking_kinds - waived))
        await self.trail.append(AuditEntry.by(
            principal, Role.QA_OWNER.value, "dataset.waive", "dataset_version", version,
            old_value={"blocking": rec.blocking}, new_value={"waived": kind}, reason=reason,
        ))  # fmt: skip
        return await self.get(version)

    async def check_promotable(self, dataset_version: str) -> None:
        """Refuse (DatasetBlockedError naming the findings) a production release of a model trained on a
        recorded dataset version that still has an unwaived blocking finding. Versions this
        registry never recorded (a manifest hash of an unversioned folder) are not judged here."""
        async with self.db.connection() as conn:
            rec = await repo.get_version(conn, dataset_version)
            if rec is None or not rec.blocking:
                return
            waived = {w.kind for w in await repo.waivers(conn, dataset_version)}
        kinds = sorted({f["kind"] for f in rec.report.get("findings", [])
                        if f["severity"] == hygiene_report.BLOCKING} - waived)  # fmt: skip
        raise DatasetBlockedError(
            f"dataset {dataset_version} has blocking hygiene findings {kinds}: a QA owner must waive "
            "them (WaiveDatasetFinding, with a reason) before a model trained on it goes to production"
        )

    def holdout(self) -> HoldoutReader:
        return HoldoutReader(self.db, self.store)

    async def training_rows(self, version: str) -> list[dict[str, Any]]:
        """What training, threshold tuning and model selection may read: train and val only."""
        return [r for r in (await self.manifest(version))["rows"] if r["split"] != HOLDOUT]


class HoldoutReader:
    """The only way to the protected holdout's rows: a read needs a named purpose and reader,
    and every read is logged (who, why, how many) before the rows are returned. Training jobs
    read it through here too, for the release evaluation only (never to fit or tune)."""

    def __init__(self, db: ConnectionSource, store: ObjectReader) -> None:
        self._db = db
        self._store = store

    async def read(self, version: str, *, purpose: str, reader: str) -> list[dict[str, Any]]:
        if not purpose.strip() or not reader.strip():
            raise HoldoutRefusedError(
                "the protected holdout is read only for a named purpose by a named reader "
                "(e.g. purpose='release check', reader='quinn')"
            )
        async with self._db.connection() as conn:
            rec = await repo.get_version(conn, version)
        if rec is None:
            raise UnknownDatasetError(version)
        manifest = json.loads(await self._store.aget_bytes(rec.manifest_bucket, rec.manifest_key))
        rows = [r for r in manifest["rows"] if r["split"] == HOLDOUT]
        async with self._db.connection() as conn, conn.transaction():
            await repo.log_holdout_read(
                conn, rec.product, version, purpose.strip(), reader.strip(), len(rows)
            )
        log.info("holdout of %s read by %s for %s (%d images)", version, reader, purpose, len(rows))
        return rows
