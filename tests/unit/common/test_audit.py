"""Audit chain: canonical JSON, sealing, and verify naming the first broken record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from linesight.common.audit import (
    GENESIS,
    AuditEntry,
    AuditRecord,
    canonical_json,
    chain_hash,
    seal,
    verify,
)
from linesight.common.identity import Grant, Principal

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
ANN = Principal("u_1", "Ann", "user", (Grant.parse("qa_owner@plant1"),))


def chain(n: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev = GENESIS
    for i in range(n):
        entry = AuditEntry.by(
            ANN, "qa_owner", "model.promote", "model", f"m{i}",
            old_value={"stage": "shadow"}, new_value={"stage": "active", "threshold": 0.42},
            reason="passed validation", client="10.0.0.7",
        )  # fmt: skip
        records.append(seal(entry, seq=i + 1, prev_hash=prev, at=T0 + timedelta(seconds=i)))
        prev = records[-1].hash
    return records


def test_canonical_json_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": ["é", 0.1, 1e20]}) == '{"a":["é",0.1,1e+20],"b":1}'
    with pytest.raises(ValueError, match="finite"):
        canonical_json({"x": [float("nan")]})
    with pytest.raises(ValueError):
        canonical_json(float("inf"))


def test_intact_chain_verifies_and_values_round_trip() -> None:
    records = chain(4)
    assert verify(records) is None
    assert records[0].prev_hash == GENESIS
    assert records[1].prev_hash == records[0].hash
    assert records[2].new() == {"stage": "active", "threshold": 0.42}
    assert records[2].old() == {"stage": "shadow"}


def test_changed_field_names_that_record() -> None:
    records = chain(4)
    records[2] = dataclasses.replace(records[2], reason="because I said so")
    brk = verify(records)
    assert brk is not None and brk.seq == 3 and "was changed" in brk.reason


def test_changed_timestamp_is_caught_too() -> None:
    records = chain(3)
    records[1] = dataclasses.replace(records[1], at=records[1].at + timedelta(microseconds=1))
    brk = verify(records)
    assert brk is not None and brk.seq == 2


def test_rehashed_record_breaks_the_link_to_its_successor() -> None:
    records = chain(4)
    forged = dataclasses.replace(records[1], new_value='{"stage":"retired"}')
    records[1] = dataclasses.replace(forged, hash=chain_hash(forged.prev_hash, forged))
    brk = verify(records)
    assert brk is not None and brk.seq == 3 and "prev_hash" in brk.reason


def test_missing_record_is_named() -> None:
    records = chain(4)
    del records[1]
    brk = verify(records)
    assert brk is not None and brk.seq == 3 and "missing" in brk.reason


def test_entry_role_must_be_held_by_the_principal() -> None:
    with pytest.raises(ValueError, match="does not hold role 'admin'"):
        AuditEntry.by(ANN, "admin", "user.disable", "user", "u_2")
