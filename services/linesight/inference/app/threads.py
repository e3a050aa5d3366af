"""Thread pools of the process, capped so frames scored in parallel on our own threads keep the
cores: OpenCV's and every BLAS library loaded (also by a model's loader)."""

from __future__ import annotations

import contextlib
import importlib
import logging

import cv2

from linesight.inference.app.config import InferenceConfig
from linesight.vision.components.threads import limit_blas_threads

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
    # unlimited, scipy's 2 spinning workers cost PatchCore ~45 % more CPU on 2 shared cores and
    # no time; the start and every model install call this on the event loop thread
    limit_blas_threads(config.blas_threads)


__all__ = ["limit_blas_threads", "limit_threads"]
