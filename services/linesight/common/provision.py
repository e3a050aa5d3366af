"""Create and update the JetStream streams and durable consumers, as the `provisioner` NATS user.

Services may not create streams (their NATS users lack the permission, so a compromised service
cannot reshape the record); this step does it once per installation and upgrade. The embedded
stack runs it after NATS starts (`linesight up`) and again after a NATS restart; the Helm chart
runs it as a Job per release revision:

    LINESIGHT_NATS_USER=provisioner LINESIGHT_NATS_PASSWORD=... python -m linesight.common.provision

Durable consumers (linesight.common.consumers) are broker state too: their filters, ack waits and
redelivery limits are set here, per plant, so a rolling update never has two service versions
rewriting them, and a consumer's settings are reviewed with the release like a stream's.
Inference's station groups come from `--inference-groups` (e.g. `a=line1/st1,line1/st2;b=line2/st3`;
default one group `all` of every station; the chart passes nats.provision.inferenceGroups).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Mapping, Sequence

from linesight.common.bus import PROVISIONER_USER, Bus, BusUnavailable
from linesight.common.consumers import DEFAULT_GROUP, ensure_consumers, parse_groups, plant_consumers
from linesight.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 120.0  # a cluster may start NATS after this Job


async def provision_streams(
    settings: Settings,
    *,
    wait_s: float = CONNECT_WAIT_S,
    name: str = "linesight-provision",
    inference_groups: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Connect (retrying for up to `wait_s`: NATS may still be starting) and ensure every stream,
    then every durable consumer of `settings.plant` (inference's `inference_groups`, default `all`).

    Returns what was created or updated; raises BusUnavailable when NATS stays unreachable or
    refuses, and ValueError when `settings` names a NATS user other than the provisioner.
    """
    if settings.nats_user and settings.nats_user != PROVISIONER_USER:
        raise ValueError(
            f"streams are provisioned as NATS user {PROVISIONER_USER!r}, not {settings.nats_user!r} "
            "(set LINESIGHT_NATS_USER=provisioner and its password)"
        )
    deadline = time.monotonic() + wait_s
    while True:
        try:
            bus = await Bus.connect_as(settings, name, connect_attempts=1)
            break
        except BusUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("%s; retrying", exc)
            await asyncio.sleep(1.0)
    try:
        changed = await bus.ensure_streams()
        specs = plant_consumers(settings.plant, inference_groups=inference_groups)
        try:
            changed += await ensure_consumers(bus.jetstream, specs)
        except RuntimeError as exc:
            raise BusUnavailable(str(exc)) from exc
        return changed
    finally:
        await bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linesight.common.provision", description=__doc__)
    parser.add_argument("--wait-s", type=float, default=CONNECT_WAIT_S, help="how long to wait for NATS")
    parser.add_argument(
        "--inference-groups",
        default=DEFAULT_GROUP,
        help=f"inference station groups: '{DEFAULT_GROUP}', or 'a=line1/st1,line1/st2;b=st3'",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        groups = parse_groups(args.inference_groups)
    except ValueError as exc:
        log.error("--inference-groups: %s", exc)
        return 2
    try:
        changed = asyncio.run(provision_streams(get_settings(), wait_s=args.wait_s, inference_groups=groups))
    except (BusUnavailable, ValueError) as exc:
        log.error("provisioning failed: %s", exc)
        return 1
    log.info("streams and consumers ready%s", f" ({', '.join(changed)})" if changed else " (no change)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
