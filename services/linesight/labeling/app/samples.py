"""Agreement between labelers: shared samples (the same frames labeled independently by several
people, once each) and their kappa figures, beside the two-pass workflow's disagreement rates by
class, station, part and reviewer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from linesight.common.identity import Principal
from linesight.common.limits import check_name
from linesight.labeling.app import roles
from linesight.labeling.app.agreement import AgreementFigures, agreement, disagreement_rates, pass_agreement
from linesight.labeling.app.core import LabelingCore
from linesight.labeling.app.errors import (
    ConflictError,
    FieldError,
    FrameNotFoundError,
    InvalidLabelError,
    NotFoundError,
)
from linesight.labeling.app.labels import check_class
from linesight.labeling.store import workflow
from linesight.labeling.store.workflow import Sample, SampleLabel


class SampleUseCases(LabelingCore):
    async def create_sample(
        self, principal: Principal, name: str, frame_ids: Sequence[str], client: str = ""
    ) -> Sample:
        """A shared sample: the same frames for several people to label independently."""
        name = check_name(name.strip(), "name")
        if not name:
            raise FieldError("name", "required")
        frames = list(dict.fromkeys(check_name(f, "frame_ids") for f in frame_ids))
        if len(frames) < 2:
            raise FieldError("frame_ids", "a shared sample needs at least two frames")
        role = roles.acting_role(principal, roles.SAMPLE_CREATE, self.plant, self.product)
        sample = Sample(
            uuid.uuid4().hex[:16], name, self.product, frames, principal.subject, datetime.now(UTC)
        )
        async with self.db.connection() as conn, conn.transaction():
            missing = sorted(set(frames) - await workflow.existing_frames(conn, frames))
            if missing:
                raise FrameNotFoundError(missing[0])
            await workflow.insert_sample(conn, sample)
            await self._audit(
                conn,
                principal,
                role,
                "sample.create",
                ("sample", sample.id),
                new={"name": name, "frames": frames},
                client=client,
            )
        return sample

    async def sample_label(
        self, principal: Principal, sample_id: str, frame_id: str, label: str, client: str = ""
    ) -> None:
        """One rater's independent label of a sample frame (once: agreement needs first opinions)."""
        async with self.db.connection() as conn, conn.transaction():
            sample = await self._sample(conn, sample_id)
            if frame_id not in sample.frames:
                raise FrameNotFoundError(frame_id)
            role = roles.acting_role(principal, roles.SAMPLE_LABEL, self.plant, sample.product)
            checked, _ = await check_class(conn, sample.product, label, "label")
            added = await workflow.add_sample_label(
                conn, sample_id, SampleLabel(frame_id, principal.subject, principal.name, checked)
            )
            if not added:
                raise ConflictError(f"{principal.name} already labeled {frame_id} in sample {sample_id}")
            await self._audit(
                conn,
                principal,
                role,
                "sample.label",
                ("sample", sample_id),
                new={"frame_id": frame_id, "label": checked},
                client=client,
            )

    async def agreement(self, sample_id: str) -> AgreementFigures:
        """Kappa figures of a shared sample plus the two-pass workflow's disagreement breakdown."""
        async with self.db.connection() as conn:
            await self._sample(conn, sample_id)
            rows = await workflow.sample_labels(conn, sample_id)
            outcomes = await workflow.review_outcomes(conn)
        by_rater: dict[str, dict[str, str]] = {}
        for r in rows:
            by_rater.setdefault(r.rater_name or r.rater, {})[r.frame_id] = r.label
        try:
            figures = _with_disagreement(agreement(by_rater), outcomes)
        except ValueError as exc:
            raise InvalidLabelError(f"sample {sample_id}: {exc}") from exc
        self.last_agreement[sample_id] = figures
        return figures

    async def workflow_agreement(self) -> AgreementFigures:
        """Labeler/reviewer agreement of the two-pass workflow (kappa per pair and per class,
        confusion pairs) with its disagreement breakdown: what the agreement page shows without a
        shared sample. InvalidLabelError while nothing has been reviewed yet."""
        async with self.db.connection() as conn:
            outcomes = await workflow.review_outcomes(conn)
        try:
            figures = pass_agreement(
                (o.labeler, o.first_label, o.reviewer, o.corrected_label) for o in outcomes
            )
        except ValueError as exc:
            raise InvalidLabelError(f"two-pass agreement: {exc}") from exc
        return _with_disagreement(figures, outcomes)

    @staticmethod
    async def _sample(conn: Any, sample_id: str) -> Sample:
        sample = await workflow.get_sample(conn, sample_id)
        if sample is None:
            raise NotFoundError(f"no sample {sample_id!r}")
        return sample


def _with_disagreement(
    figures: AgreementFigures, outcomes: Sequence[workflow.ReviewOutcome]
) -> AgreementFigures:
    """`figures` plus the share of rejected second passes by class, station, part and reviewer."""
    return AgreementFigures(
        **{
            **asdict(figures),
            "pairs": figures.pairs,
            "disagreement_by_class": disagreement_rates((o.first_label, o.accepted) for o in outcomes),
            "disagreement_by_station": disagreement_rates((o.station, o.accepted) for o in outcomes),
            "disagreement_by_part": disagreement_rates((o.part_id, o.accepted) for o in outcomes),
            "disagreement_by_reviewer": disagreement_rates((o.reviewer, o.accepted) for o in outcomes),
        }
    )
