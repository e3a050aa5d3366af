"""Create and update the JetStream streams, as the `provisioner` NATS user.

Services may not create streams (their NATS users lack the permission, so a compromised service
cannot reshape the record); this step does it once per installation and upgrade. The embedded
stack runs it after NATS starts (`linesight up`) and again after a NATS restart; the Helm chart
runs it as a Job per release revision:

    LINESIGHT_NATS_USER=provisioner LINESIGHT_NATS_PASSWORD=... python -m linesight.common.provision

Consumers are not provisioned here: each service creates its own durable consumers (their ack
wait and redelivery limits are the service's configuration) on the streams it consumes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence

from linesight.common.bus import PROVISIONER_USER, Bus, BusUnavailable
from linesight.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 120.0  # a cluster may start NATS after this Job


async def provision_streams(
    settings: Settings, *, wait_s: float = CONNECT_WAIT_S, name: str = "linesight-provision"
) -> list[str]:
    """Connect (retrying for up to `wait_s`: NATS may still be starting) and ensure every stream.

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
        return await bus.ensure_streams()
    finally:
        await bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linesight.common.provision", description=__doc__)
    parser.add_argument("--wait-s", type=float, default=CONNECT_WAIT_S, help="how long to wait for NATS")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        changed = asyncio.run(provision_streams(get_settings(), wait_s=args.wait_s))
    except (BusUnavailable, ValueError) as exc:
        log.error("provisioning failed: %s", exc)
        return 1
    log.info("streams ready%s", f" ({', '.join(changed)})" if changed else " (no change)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
