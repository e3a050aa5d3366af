"""Threads, without torch: BLAS pools capped the same way by the inference service (which runs
exported models without torch) and the engine, and the prediction pipeline both runtimes use."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["limit_blas_threads", "pipelined"]

_C = TypeVar("_C")
_O = TypeVar("_O")
_R = TypeVar("_R")

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


def pipelined(
    chunks: Sequence[_C], network: Callable[[_C], _O], assemble: Callable[[_C, _O], list[_R]]
) -> list[_R]:
    """``assemble(chunk, network(chunk))`` for every chunk, in order, with the network of the next
    chunk running in a worker thread while this thread assembles the current one.

    The network (onnxruntime, torch) releases the GIL and keeps both cores busy only while it
    runs; PatchCore's kNN and the heads after it use one. Overlapping them lifts offline
    prediction (exp5, 225 frames, five alternating runs: 192 px 107 -> 125 img/s). A failure in
    either step reaches the caller; the worker finishes its chunk first.
    """
    if len(chunks) <= 1:
        return [r for c in chunks for r in assemble(c, network(c))]
    out: list[_R] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="linesight-net") as pool:
        pending = pool.submit(network, chunks[0])
        for i, chunk in enumerate(chunks):
            outputs = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(network, chunks[i + 1])
            out.extend(assemble(chunk, outputs))
    return out
