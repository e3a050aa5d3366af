"""The inference service's composition root: `setup(ctx)` wires the app, the bus worker and gRPC."""

from __future__ import annotations

from dataclasses import replace

from linesight.common.service import ServiceContext
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.api.grpc import InferenceServicer, register
from linesight.inference.api.policy import POLICY
from linesight.inference.app.config import BackendKind, InferenceConfig
from linesight.inference.app.service import InferenceApp


def config_for(ctx: ServiceContext) -> InferenceConfig:
    """LINESIGHT_INFERENCE_* tuning; a LINESIGHT_TRITON_URL selects Triton gRPC unless told otherwise."""
    cfg = InferenceConfig.from_env(validate=False)  # validated below, after the shared settings
    s = ctx.settings
    if s.triton_url and not cfg.triton_url:
        cfg = replace(cfg, triton_url=s.triton_url)
        if cfg.backend == BackendKind.IN_PROCESS:
            cfg = replace(cfg, backend=BackendKind.TRITON_GRPC)
    if cfg.backend == BackendKind.TRITON_HTTP and not cfg.triton_http_url:
        cfg = replace(cfg, triton_http_url=f"{s.host}:{s.triton_http_port}")
    if cfg.triton_model_repository is None and cfg.backend != BackendKind.IN_PROCESS:
        cfg = replace(cfg, triton_model_repository=s.state_dir / "triton" / "models")
    cfg.validate()
    return cfg


async def setup(ctx: ServiceContext) -> InferenceApp:
    ctx.use_auth(POLICY)
    app = InferenceApp(ctx.settings, ctx.store, ctx.bus, config_for(ctx))
    await app.start()
    worker = InspectionWorker(app, ctx.bus)
    await worker.start()
    ctx.add_grpc(lambda server: register(server, InferenceServicer(app, worker)))
    # No readiness check on "a model is loaded": a fresh plant starts without one, and frames
    # that arrive before the first ModelPublished still get an explicit error result routed to
    # review. GetModelInfo says which version (if any) is served.

    async def shutdown() -> None:
        await worker.stop()
        await app.stop()

    ctx.on_shutdown(shutdown)
    return app
