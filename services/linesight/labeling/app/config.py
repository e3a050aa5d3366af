"""Labeling's own settings (`LINESIGHT_LABELING_*`): review thresholds, audit sampling, claim
leases and review capacity. Kept apart from the core Settings, which every service loads."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUES = ("review", "audit", "dispute", "relabel")


class LabelingConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINESIGHT_LABELING_", extra="forbid", frozen=True)

    # Below this calibrated confidence a machine verdict goes to a human.
    min_confidence: float = Field(default=0.6, ge=0.0, le=1.0)
    # Share of automatic passes and rejects a human re-checks, so escapes and concept drift show
    # up even while the model is confident. Per-station overrides: '{"st1": 0.1}'.
    audit_share: float = Field(default=0.02, ge=0.0, le=1.0)
    audit_share_by_station: dict[str, float] = Field(default_factory=dict)
    # The sample is a pure function of (seed, frame id): a replayed stream samples the same frames.
    audit_seed: str = "linesight"
    # A claim lasts this long; an inspector who walks away loses it and the item returns.
    lease_s: float = Field(default=300.0, gt=0.0, le=86_400.0)
    # Items one shift can work through, per queue; a deeper queue raises the over-capacity signal.
    capacity_per_shift: dict[str, int] = Field(
        default_factory=lambda: {"review": 400, "audit": 100, "dispute": 40, "relabel": 200}
    )
