"""PatchCore on pre-extracted patch embeddings (numpy and onnxruntime, no torch: shared by the
engine and the exported model).

Roth et al., "Towards Total Recall in Industrial Anomaly Detection": a memory bank of good-patch
embeddings, subsampled by a greedy k-center coreset (on a random projection, so the quadratic part
stays cheap), nearest-neighbour distance as the patch score and a re-weighted maximum as the image
score. The bank is capped in size so fit time and memory stay bounded on a 2-core box.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["PatchCore", "PatchCoreConfig", "anomaly_map", "greedy_coreset"]

_log = logging.getLogger(__name__)

# (nearest bank row, its |b|^2 - 2 a.b) for a block of patch embeddings
Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PatchCoreConfig:
    """Knobs that trade fit time / inference speed against coverage of good appearance."""

    max_bank: int = 1024  # hard cap on memory-bank rows (kNN cost is linear in it; 2048 -> 1024 halves it)
    coreset_ratio: float = 0.1  # of the (pre-sampled) patches, before the cap
    max_candidates: int = 40_000  # random pre-sample before the greedy coreset (bounds fit time)
    projection_dim: int = 64  # random projection used only for the coreset distances
    reweight_neighbours: int = 9
    sigma: float = 4.0  # Gaussian smoothing of the anomaly map, in network-input pixels
    # patches per kNN block (buffer: chunk x max_bank float32); 512 keeps the block in cache and
    # was the fastest of 128-9216 measured, for onnxruntime and BLAS alike (vision/README.md)
    score_chunk: int = 512


def greedy_coreset(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of an approximate k-center coreset of ``x`` ([N, d] float32) of size ``n``."""
    num = len(x)
    if n >= num:
        return np.arange(num)
    sq = np.einsum("ij,ij->i", x, x)
    first = int(rng.integers(num))
    min_d = sq - 2.0 * (x @ x[first]) + sq[first]
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = first
    for k in range(1, n):
        i = int(np.argmax(min_d))
        chosen[k] = i
        np.minimum(min_d, sq - 2.0 * (x @ x[i]) + sq[i], out=min_d)
    return chosen


def _neg2_dot(a: np.ndarray, bank_t: np.ndarray) -> np.ndarray:
    """``a @ bank_t`` (float32, C-contiguous [n, M]); ``bank_t`` holds -2 * bank.T.

    Through scipy's BLAS when available: numpy's bundled OpenBLAS often runs generic kernels on
    these CPUs (2.5x slower on the 2-core box). Both operands are passed as Fortran views of the
    C arrays, so nothing is copied and the result's transpose is C-contiguous.
    """
    if _sgemm is None:
        return a @ bank_t
    return np.asarray(_sgemm(1.0, bank_t.T, a.T).T)


try:  # scipy is a dependency of the engine, but keep the scorer working without it
    from scipy.linalg.blas import sgemm as _sgemm
except ImportError:  # pragma: no cover
    _sgemm = None


def _onnx_search(bank_t: np.ndarray, bank_sq: np.ndarray, threads: int) -> Search:
    """The nearest-row search as an onnxruntime graph (MatMul, Add, ArgMin, ReduceMin).

    Why not BLAS: scipy's wrappers hold the GIL and its OpenBLAS workers busy-wait after each call
    against the network's threads (so BLAS stays at one thread), while onnxruntime's GEMM runs on
    ``threads`` workers that sleep when idle: on 2 cores the search takes 0.56x the time of one
    BLAS thread (vision/README.md, "PatchCore kNN").
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    dim = bank_t.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "bank_t"], ["g"]),
            helper.make_node("Add", ["g", "bank_sq"], ["d"]),
            helper.make_node("ArgMin", ["d"], ["nearest"], axis=1, keepdims=0),
            helper.make_node("ReduceMin", ["d"], ["distance"], axes=[1], keepdims=0),
        ],
        "patchcore_nearest",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", dim])],
        [
            helper.make_tensor_value_info("nearest", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("distance", TensorProto.FLOAT, ["n"]),
        ],
        [numpy_helper.from_array(bank_t, "bank_t"), numpy_helper.from_array(bank_sq, "bank_sq")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )

    def search(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nearest, distance = session.run(None, {"x": block})
        return nearest, distance

    return search


def _blas_search(bank_t: np.ndarray, bank_sq: np.ndarray) -> Search:
    """The same search through BLAS (the fallback where onnxruntime cannot build the graph)."""

    def search(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = _neg2_dot(block, bank_t)  # [chunk, M] = -2 a.b
        g += bank_sq
        idx = np.argmin(g, axis=1)
        return idx, g[np.arange(len(block)), idx]

    return search


def _default_threads() -> int:
    """Threads for the search: the cores there are, at most 2 (the engine's network uses as many)."""
    return max(1, min(2, os.cpu_count() or 1))


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = np.einsum("ij,ij->i", a, a)[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


class PatchCore:
    """Memory bank + kNN scorer. ``bank`` rows are patch embeddings of good images.

    ``threads``: onnxruntime workers of the nearest-row search (a runtime setting like the
    network's, never saved)."""

    def __init__(self, config: PatchCoreConfig | None = None, *, threads: int | None = None) -> None:
        self.config = config or PatchCoreConfig()
        self.threads = threads or _default_threads()
        self._search: Search | None = None
        self.bank = np.zeros((0, 0), dtype=np.float32)
        self.projection = np.zeros((0, 0), dtype=np.float32)
        self.bank_nn = np.zeros((0, 0), dtype=np.int64)
        self._bank_sq = np.zeros(0, dtype=np.float32)
        self._bank_t = np.zeros((0, 0), dtype=np.float32)

    @property
    def fitted(self) -> bool:
        return self.bank.size > 0

    @property
    def nbytes(self) -> int:
        return int(self.bank.nbytes + self.bank_nn.nbytes)

    def fit(self, patches: np.ndarray, seed: int = 0) -> None:
        """Build the bank from good-image patch embeddings [N_img, P, C]."""
        if patches.ndim != 3 or len(patches) == 0:
            raise ValueError(f"PatchCore.fit needs [N_img, P, C] patches, got shape {patches.shape}")
        cfg = self.config
        rng = np.random.default_rng(seed)
        flat = patches.reshape(-1, patches.shape[-1]).astype(np.float32, copy=False)
        if len(flat) > cfg.max_candidates:
            flat = flat[rng.choice(len(flat), cfg.max_candidates, replace=False)]
        dim = flat.shape[1]
        self.projection = (
            rng.standard_normal((dim, cfg.projection_dim)) / np.sqrt(cfg.projection_dim)
        ).astype(np.float32)
        n = min(cfg.max_bank, max(1, round(len(flat) * cfg.coreset_ratio)))
        idx = greedy_coreset(flat @ self.projection, n, rng)
        self.set_bank(np.ascontiguousarray(flat[idx]), self.projection)

    def set_bank(self, bank: np.ndarray, projection: np.ndarray, bank_nn: np.ndarray | None = None) -> None:
        """Install a bank (e.g. loaded from .npy) and precompute its self-neighbours."""
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.projection = np.asarray(projection, dtype=np.float32)
        self._bank_sq = np.einsum("ij,ij->i", self.bank, self.bank)
        self._bank_t = np.ascontiguousarray(-2.0 * self.bank.T, dtype=np.float32)
        self._search = None  # built for this bank on the next score
        if bank_nn is None and len(self.bank) == 0:
            bank_nn = np.zeros((0, 0), dtype=np.int64)
        elif bank_nn is None:
            k = min(self.config.reweight_neighbours, len(self.bank))
            nn_rows = []
            for s in range(0, len(self.bank), 1024):
                d = _sq_dists(self.bank[s : s + 1024], self.bank, self._bank_sq)
                nn_rows.append(np.argsort(d, axis=1)[:, :k])
            bank_nn = np.concatenate(nn_rows, axis=0)
        self.bank_nn = np.asarray(bank_nn, dtype=np.int64)

    def prepare(self) -> None:
        """Build the search for the current bank now, not on the first frame."""
        if self.fitted:
            self._searcher()

    def _searcher(self) -> Search:
        if self._search is None:
            try:
                self._search = _onnx_search(self._bank_t, self._bank_sq, self.threads)
            except Exception as exc:  # onnx/onnxruntime missing or refusing the graph: BLAS does it
                _log.warning("PatchCore search through BLAS (onnxruntime unavailable: %s)", exc)
                self._search = _blas_search(self._bank_t, self._bank_sq)
        return self._search

    def score(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patch distances [B, P] and re-weighted image scores [B] for embeddings [B, P, C].

        One float32 matmul per chunk of patches of the whole batch against the bank (no faiss):
        argmin of |b|^2 - 2 a.b finds the nearest bank row, then |a|^2 is added back. Chunks keep
        memory at ``chunk x bank rows`` floats; the search runs in onnxruntime (``_onnx_search``).
        """
        b, p, c = patches.shape
        if not self.fitted:  # no good images were given: a classification-only model scores 0
            return np.zeros((b, p), dtype=np.float32), np.zeros(b, dtype=np.float32)
        flat = np.ascontiguousarray(patches.reshape(b * p, c), dtype=np.float32)
        n = len(flat)
        nn_idx = np.empty(n, dtype=np.int64)
        min_d = np.empty(n, dtype=np.float32)
        chunk = self.config.score_chunk
        search = self._searcher()
        for s in range(0, n, chunk):
            blk = flat[s : s + chunk]
            nn_idx[s : s + len(blk)], min_d[s : s + len(blk)] = search(blk)
        min_d += np.einsum("ij,ij->i", flat, flat)
        np.maximum(min_d, 0.0, out=min_d)
        patch_scores = np.sqrt(min_d).reshape(b, p)
        nn_idx = nn_idx.reshape(b, p)
        star = np.argmax(patch_scores, axis=1)  # most anomalous patch of each image
        rows = np.arange(b)
        x_star = flat.reshape(b, p, c)[rows, star]  # [B, C]
        neigh = self.bank_nn[nn_idx[rows, star]]  # [B, k]: m* and its neighbours in the bank
        diff = self.bank[neigh] - x_star[:, None, :]
        dn = np.sqrt(np.einsum("bkc,bkc->bk", diff, diff).astype(np.float64))
        if neigh.shape[1] > 1:
            # PatchCore re-weighting: an outlier patch whose nearest bank entry sits in a sparse
            # region of the bank counts more than one near a dense cluster.
            e = np.exp(dn - dn.max(axis=1, keepdims=True))
            w = 1.0 - e[:, 0] / e.sum(axis=1)
        else:
            w = np.ones(b)
        image_scores = (patch_scores[rows, star] * w).astype(np.float32)
        return patch_scores, image_scores


def anomaly_map(
    patch_scores: np.ndarray,
    grid: tuple[int, int],
    out_hw: tuple[int, int],
    input_hw: tuple[int, int],
    sigma: float,
    scale: float,
) -> np.ndarray:
    """Patch scores -> float32 map at the original image size, Gaussian-smoothed, divided by ``scale``."""
    gh, gw = grid
    m = patch_scores.reshape(gh, gw).astype(np.float32) / np.float32(scale)
    h, w = out_hw
    # Smooth on a 2x-upsampled patch grid, then resize: both steps are linear, so this matches
    # blurring at full size closely while costing a fraction (a blur over a 300x250 map was a
    # tenth of the prediction time on 2 cores).
    fh, fw = 2 * gh, 2 * gw
    mid = cv2.resize(m, (fw, fh), interpolation=cv2.INTER_LINEAR)
    s = sigma * 0.5 * (fh / input_hw[0] + fw / input_hw[1])
    if s > 0.3:
        mid = cv2.GaussianBlur(mid, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT)
    up = cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)
    return up.astype(np.float32, copy=False)
