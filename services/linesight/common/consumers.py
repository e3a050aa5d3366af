"""The durable JetStream consumers of a plant, as data: what the provisioner creates, what services bind to.

A durable consumer is shared state on the broker (its filter, how long a delivery may stay
unacknowledged, how often it is redelivered), like a stream. Left to each service, a rolling update
in which two versions disagree rewrites it on every pod start, and a service user needs the right
to create arbitrary consumers on its streams. So the `provisioner` (the embedded stack at `up`, the
chart's Job per release) creates and updates every durable consumer from this catalogue, next to
the streams; a service checks at start that its consumer exists (waiting, like for streams, for a
Job that starts together with it) and fails with a message naming the provisioning step if not.

The values here are the ones the services pass to `Bus.consume`. As a service user it only binds:
it waits for the provisioner's consumer and warns when the broker's settings differ from its own
(a unit test holds the two equal); its NATS user has no right to create a named consumer, so a
compromised service cannot rewrite another service's consumer on a shared stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

from linesight.common import subjects as subj

log = logging.getLogger(__name__)

# Capture -> disposition budget of a line's reject gate (MES counts and alarms later dispositions).
REJECT_WINDOW_S = 5.0
BUS_DEFAULT_ACK_WAIT_S = 30.0  # Bus.consume's default: consumers off the line's critical path
BUS_DEFAULT_MAX_DELIVER = 5
BUS_DEFAULT_BATCH = 16
INFERENCE_MAX_DELIVER = 60  # outages of ~28 min retried (inference's config says why)
DEFAULT_GROUP = "all"  # inference's station group when none is configured: every station


class ConsumerMissing(RuntimeError):  # noqa: N818 - reads as the condition, like BusUnavailable
    """A service's durable consumer does not exist: the provisioning step has not run."""


class ConsumerUnreadable(RuntimeError):  # noqa: N818 - reads as the condition, like BusUnavailable
    """JetStream did not answer a consumer-info request (broker down, or no permission)."""


@dataclass(frozen=True)
class ConsumerSpec:
    """One durable pull consumer: `max_deliver` is the handler's limit (the broker gets one more,
    so a delivery that died on the last attempt still reaches the dead-letter queue)."""

    service: str
    durable: str
    filters: tuple[str, ...]
    ack_wait_s: float = BUS_DEFAULT_ACK_WAIT_S
    max_deliver: int = BUS_DEFAULT_MAX_DELIVER
    batch: int = BUS_DEFAULT_BATCH

    @property
    def stream(self) -> str:
        return subj.stream_for_subject(self.filters[0]).name

    def config(self) -> js_api.ConsumerConfig:
        """The broker's config, field for field what `Bus.consume` sends for the same arguments."""
        return js_api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            filter_subject=self.filters[0] if len(self.filters) == 1 else None,
            filter_subjects=list(self.filters) if len(self.filters) > 1 else None,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            max_deliver=self.max_deliver + 1,
            ack_wait=self.ack_wait_s,
            max_ack_pending=max(self.batch * 4, 64),
        )


def inference_durable(group: str) -> str:
    """`inference-frame-captured-<group>`: one durable per station group."""
    subj.validate_token("station group", group)
    return subj.durable_name("inference", subj.FRAME_CAPTURED) + f"-{group}"


def plant_consumers(
    plant: str,
    *,
    inference_groups: Mapping[str, Sequence[str]] | None = None,
    reject_window_s: float = REJECT_WINDOW_S,
) -> list[ConsumerSpec]:
    """Every durable consumer of `plant`'s services.

    `inference_groups` maps a station group to its "line/station" or "station" entries (empty =
    the whole plant); default one group `all`. Consumers on the line's path (inference's frames,
    MES's results) redeliver a crashed holder's message after half the reject window, so it still
    gets its disposition inside the window; the rest keep the bus default.
    """
    if reject_window_s <= 0:
        raise ValueError(f"reject window must be > 0 s, not {reject_window_s}")
    groups = dict(inference_groups) if inference_groups else {DEFAULT_GROUP: ()}
    line_ack_s = reject_window_s / 2
    results = subj.station_pattern(subj.INSPECTION_RESULT, plant=plant)
    taxonomies = subj.plant_pattern(subj.TAXONOMY_PUBLISHED, plant=plant)
    out = [
        ConsumerSpec(
            "inference",
            inference_durable(group),
            tuple(subj.station_filters(subj.FRAME_CAPTURED, plant, stations)),
            ack_wait_s=line_ack_s,
            max_deliver=INFERENCE_MAX_DELIVER,
            batch=1,
        )
        for group, stations in sorted(groups.items())
    ]
    out += [
        ConsumerSpec(
            "mes", subj.durable_name("mes", subj.INSPECTION_RESULT), (results,), line_ack_s, batch=32
        ),
        ConsumerSpec("labeling", subj.durable_name("labeling", subj.INSPECTION_RESULT), (results,), batch=32),
        ConsumerSpec("labeling", subj.durable_name("labeling", subj.TAXONOMY_PUBLISHED), (taxonomies,)),
        # Training learns one model per product across plants: its filters name every plant.
        ConsumerSpec(
            "training",
            subj.durable_name("training", subj.LABEL_SUBMITTED),
            (subj.plant_pattern(subj.LABEL_SUBMITTED),),
        ),
        ConsumerSpec(
            "training",
            subj.durable_name("training", subj.TAXONOMY_PUBLISHED),
            (subj.plant_pattern(subj.TAXONOMY_PUBLISHED),),
        ),
        ConsumerSpec(
            "training",
            subj.durable_name("training", subj.INSPECTION_RESULT),
            (subj.station_pattern(subj.INSPECTION_RESULT),),
        ),
        ConsumerSpec(
            "training",
            subj.durable_name("training", subj.INSPECTION_SHADOW),
            (subj.station_pattern(subj.INSPECTION_SHADOW),),
        ),
    ]
    return out


def parse_groups(text: str) -> dict[str, tuple[str, ...]]:
    """`"all"` or `"a=line1/st1,line1/st2;b=st3"` -> {group: stations}; ValueError naming the part."""
    groups: dict[str, tuple[str, ...]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, stations = part.partition("=")
        name = name.strip()
        subj.validate_token("station group", name)
        if name in groups:
            raise ValueError(f"station group {name!r} given twice in {text!r}")
        groups[name] = tuple(s.strip() for s in stations.split(",") if s.strip())
    if not groups:
        raise ValueError(f"no station group in {text!r} (e.g. 'all' or 'a=line1/st1;b=line1/st2')")
    return groups


def differs(current: js_api.ConsumerConfig, wanted: js_api.ConsumerConfig) -> list[str]:
    """The fields we set that differ (the server fills in the rest with its defaults)."""
    out = []
    have = sorted(current.filter_subjects or ([current.filter_subject] if current.filter_subject else []))
    want = sorted(wanted.filter_subjects or ([wanted.filter_subject] if wanted.filter_subject else []))
    if have != want:
        out.append(f"filter {have} -> {want}")
    if abs((current.ack_wait or 0.0) - (wanted.ack_wait or 0.0)) > 1e-3:
        out.append(f"ack_wait {current.ack_wait} -> {wanted.ack_wait}")
    for name in ("max_deliver", "max_ack_pending", "ack_policy"):
        a, b = getattr(current, name), getattr(wanted, name)
        if a != b:
            out.append(f"{name} {a} -> {b}")
    return out


async def ensure_consumers(js: JetStreamContext, specs: Sequence[ConsumerSpec]) -> list[str]:
    """Create missing consumers and update changed ones (the provisioner's step); what changed.

    A consumer's deliver policy cannot change on the broker; every other field we set can, so an
    upgrade that changes an ack wait takes effect without losing the consumer's position.
    """
    changed: list[str] = []
    for spec in specs:
        wanted = spec.config()
        current = await _config_or_none(js, spec)
        if current is not None and not (why := differs(current, wanted)):
            continue
        try:
            await js.add_consumer(spec.stream, wanted)
        except nats.js.errors.APIError as exc:
            raise RuntimeError(
                f"JetStream refused consumer {spec.durable} on {spec.stream} ({', '.join(spec.filters)}): "
                f"{exc.description or exc}"
            ) from exc
        if current is None:
            changed.append(f"created consumer {spec.durable}")
            log.info("created consumer %s on %s for %s", spec.durable, spec.stream, list(spec.filters))
        else:
            changed.append(f"updated consumer {spec.durable} ({'; '.join(why)})")
            log.info("updated consumer %s: %s", spec.durable, "; ".join(why))
    return changed


async def require_consumer(js: JetStreamContext, spec: ConsumerSpec, *, wait_s: float) -> list[str]:
    """Wait up to `wait_s` for the provisioner's consumer; ConsumerMissing after that.

    Returns how the broker's config differs from this version's (a warning for the service to log:
    the provisioner of this release has not run yet); empty when it matches.
    """
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        current = await _config_or_none(js, spec)
        if current is not None:
            return differs(current, spec.config())
        if asyncio.get_running_loop().time() >= deadline:
            raise ConsumerMissing(
                f"consumer {spec.durable} on stream {spec.stream} does not exist: durable consumers are "
                f"created by the provisioner (`linesight up` does it; the Helm chart's nats-provision Job; "
                "by hand: LINESIGHT_NATS_USER=provisioner LINESIGHT_NATS_PASSWORD=... "
                "python -m linesight.common.provision)"
            )
        await asyncio.sleep(0.5)


async def _config_or_none(js: JetStreamContext, spec: ConsumerSpec) -> js_api.ConsumerConfig | None:
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except nats.js.errors.NotFoundError:
        return None
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise ConsumerUnreadable(
            f"JetStream did not answer for consumer {spec.durable} on {spec.stream} "
            f"({type(exc).__name__}; may this NATS user read consumer info there?)"
        ) from exc
    return info.config
