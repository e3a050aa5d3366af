"""BLAS thread pools, without torch: the inference service (which runs exported models without
torch) and the engine cap them the same way."""

from __future__ import annotations

import logging

__all__ = ["limit_blas_threads"]

_log = logging.getLogger(__name__)


def limit_blas_threads(threads: int) -> None:
    """Cap every BLAS library loaded so far at ``threads`` (0 = keep).

    threadpoolctl only reaches libraries already loaded, and a limit on scipy's OpenBLAS (0.3.30)
    set from another thread than the one that set the first limit silently does not take, so a
    service calls this on its event loop thread. Libraries already within the limit are left
    alone, so a model serving in another thread never has its BLAS reconfigured under it.
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
        _log.info("BLAS threads left as they are: %s", exc)
