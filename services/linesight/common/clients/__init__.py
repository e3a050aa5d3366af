"""Thick clients for the project's own gRPC APIs, one per service in proto/linesight/v1.

They live beside the contract, not inside the services, so a tool, a test or another service
can talk to a peer without importing it. Each client is a `ServiceClient`: one typed method per
RPC, reads retried on UNAVAILABLE / DEADLINE_EXCEEDED, mutations never retried (a timed-out
mutation may have taken effect), failures raised as the `linesight.common.grpcutil` errors.
"""

from linesight.common.clients.capture import CaptureClient
from linesight.common.clients.inference import InferenceClient
from linesight.common.clients.labeling import LabelingClient
from linesight.common.clients.mes import MesClient
from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.clients.training import TrainingClient

__all__ = [
    "CaptureClient",
    "InferenceClient",
    "LabelingClient",
    "MesClient",
    "TaxonomyClient",
    "TrainingClient",
]
