"""Thread pools of the process, capped so frames scored in parallel on our own threads keep the
cores: OpenCV's and every BLAS library loaded (also by a model's loader)."""

from __future__ import annotations

import contextlib
import importlib
import logging

import cv2

from linesight.inference.app.config import InferenceConfig

log = logging.getLogger(__name__)


def limit_threads(config: InferenceConfig) -> None:
    """Process-wide thread pools of OpenCV and BLAS: frames already run in parallel on our own
    threads, and helper threads that spin-wait only take the cores from the model and decisions.

    The model loader's module is imported first, so the BLAS it brings (scipy's, for PatchCore's
    kNN) is loaded and limited too; a model load limits what it brought after that.
    """
    if config.opencv_threads > 0:
        cv2.setNumThreads(config.opencv_threads)
    if config.blas_threads > 0:
        with contextlib.suppress(Exception):  # a loader shipped inside the export: found at load
            importlib.import_module(config.model_loader.partition(":")[0])
    limit_blas_threads(config.blas_threads)


def limit_blas_threads(threads: int) -> None:
    """Cap every BLAS library loaded so far at `threads` (0 = keep); call it on the event loop.

    threadpoolctl only reaches libraries already loaded, and a limit on scipy's OpenBLAS (0.3.30)
    set from another thread than the one that set the first limit silently does not take: so the
    start and every model install call this on the event loop thread, never in the loader's
    worker. Unlimited, scipy's 2 spinning workers cost PatchCore ~45 % more CPU on 2 shared cores
    and no time. Libraries already within the limit are left alone, so a model serving in the
    model thread never has its BLAS reconfigured under it.
    """
    if threads <= 0:
        return
    try:
        from threadpoolctl import threadpool_info, threadpool_limits

        if any(
            i.get("user_api") == "blas" and int(i.get("num_threads", 0)) > threads for i in threadpool_info()
        ):
            threadpool_limits(limits=threads, user_api="blas")
    except Exception as exc:  # optional (comes with scikit-learn); only a speed-up
        log.info("BLAS threads left as they are: %s", exc)
