"""Supervised defect-type head: multinomial logistic regression on the pooled descriptor.

The descriptor comes from the frozen backbone, or from one whose last tail blocks were fine-tuned
(``finetune.py``, ``ModelConfig.finetune_blocks``); either way the head itself is this convex,
class-balanced fit: it fits in seconds on 2 CPU cores, is extended from stored features when a
class is added (replay) and is a plain linear layer, so it exports into the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["OTHER", "LinearHead", "cross_val_logits", "fit_linear_head", "fit_new_class_row"]

# Head output for defects of classes too rare for their own head (anomaly-only classes): their mass
# counts as "defective, type unknown" and goes to review.
OTHER = "_other_defect"


@dataclass
class LinearHead:
    classes: list[str]
    mean: np.ndarray  # [D] feature standardisation
    scale: np.ndarray  # [D]
    weight: np.ndarray  # [K, D]
    bias: np.ndarray  # [K]

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        return z @ self.weight.T + self.bias


def fit_linear_head(
    x: np.ndarray, y: np.ndarray, classes: list[str], *, c: float = 0.1, seed: int = 0
) -> LinearHead:
    """Class-balanced multinomial LR; ``y`` holds indices into ``classes`` (all must occur)."""
    present = np.unique(y)
    if len(present) != len(classes):
        missing = [classes[i] for i in range(len(classes)) if i not in set(present.tolist())]
        raise ValueError(f"head training data lacks classes {missing}")
    mean = x.mean(axis=0).astype(np.float32)
    scale = (x.std(axis=0) + 1e-3).astype(np.float32)
    z = (x - mean) / scale
    lr = LogisticRegression(C=c, max_iter=1000, class_weight="balanced", random_state=seed, tol=1e-4)
    lr.fit(z, y)
    w = lr.coef_.astype(np.float32)
    b = lr.intercept_.astype(np.float32)
    if len(classes) == 2:  # sklearn's binary form: p(1) = sigmoid(w.x + b) == softmax([0, w.x + b])
        w = np.vstack([np.zeros_like(w), w])
        b = np.array([0.0, b[0]], dtype=np.float32)
    return LinearHead(list(classes), mean, scale, w, b)


def cross_val_logits(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    *,
    folds: int = 5,
    c: float = 0.1,
    seed: int = 0,
    refeaturize: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Out-of-fold logits for every row; rows sharing a group (augmented copies of one image,
    photos of one part) never straddle train and held-out.

    ``refeaturize(train_rows, fold)``, when given, returns every row's features from a feature
    extractor fitted on ``train_rows`` only (a tail fine-tuned within the fold), so the held-out
    logits see features that never saw those rows; ``x`` is then unused.
    """
    min_count = int(min(len(np.unique(groups[y == k])) for k in np.unique(y)))
    k = max(2, min(folds, min_count))
    out = np.zeros((len(y), len(classes)), dtype=np.float32)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        if len(np.unique(y[tr])) != len(classes):
            raise ValueError("a cross-validation fold lost a class; too few examples")
        xf = x if refeaturize is None else refeaturize(tr, fold)
        head = fit_linear_head(xf[tr], y[tr], classes, c=c, seed=seed)
        out[te] = head.logits(xf[te])
    return out


def _lse(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def fit_new_class_row(
    z: np.ndarray,
    old_logits: np.ndarray,
    is_new: np.ndarray,
    old_y: np.ndarray,
    *,
    c: float = 0.1,
    x0: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Weight row and bias of one new class appended to a fixed softmax head.

    With the old rows frozen, p(new | x) = sigmoid(w.z + b - logsumexp(old_logits)): a binary
    logistic regression whose offset is the old head's log-partition. ``z`` are standardised
    features, ``old_logits`` the old head's logits for the same rows (out-of-fold where
    available), ``old_y`` each row's class index (any value for new rows). Class-balanced like
    ``fit_linear_head`` (each class weighs n / (K n_k)), L2 with sklearn's ``C`` convention.

    ``x0`` (``[w..., b]``, default zeros) only sets where L-BFGS starts: the problem is strictly
    convex, so every start heads for the same optimum and stops at the same tolerance. Out-of-fold
    fits start from the full-data solution, near theirs, and need fewer steps. The tolerance pins
    the loss, not each logit: where the loss is flat (rows far below the new class) logits of
    two starts can differ by tenths while probabilities and decisions agree.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    z = np.asarray(z, dtype=np.float64)
    offset = -_lse(np.asarray(old_logits, dtype=np.float64))
    t = is_new.astype(np.float64)
    k_total = len(np.unique(old_y[~is_new])) + 1
    weights = np.empty(len(z))
    n = len(z)
    weights[is_new] = n / (k_total * max(int(is_new.sum()), 1))
    for k in np.unique(old_y[~is_new]):
        m = (~is_new) & (old_y == k)
        weights[m] = n / (k_total * int(m.sum()))
    d = z.shape[1]
    start = np.zeros(d + 1) if x0 is None else np.asarray(x0, dtype=np.float64)
    if start.shape != (d + 1,) or not np.isfinite(start).all():
        raise ValueError(f"fit_new_class_row: x0 must be {d + 1} finite values, got shape {start.shape}")

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        a = z @ w + b + offset
        # weighted binary cross-entropy, numerically stable: log(1 + e^a) - t a
        ll = np.logaddexp(0.0, a) - t * a
        f = c * float(weights @ ll) + 0.5 * float(w @ w)
        r = c * weights * (expit(a) - t)
        grad = np.empty(d + 1)
        grad[:d] = z.T @ r + w
        grad[d] = r.sum()
        return f, grad

    res = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:d].astype(np.float32), float(res.x[d])
