"""Triton model repository for LineSight exports: one python-backend model per product,
integer version directories (1, 2, ...) each holding one LineSight model version.

Layout::

    <repository>/linesight_<product>/config.pbtxt      dynamic batching, version_policy all
    <repository>/linesight_<product>/<n>/model.py      linesight/inference/app/triton_model/model.py
    <repository>/linesight_<product>/<n>/export/       the export directory (ONNX, memory bank, metadata)
    <repository>/linesight_<product>/<n>/model_version.txt, loader.txt, threads.txt (optional)

With `--model-control-mode=explicit`, `load_model(name)` loads new version directories beside the
ones already serving; a version is retired by deleting its directory and loading again.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from linesight.inference.app.bundle import ModelBundle

MODEL_PY = Path(__file__).parent / "triton_model" / "model.py"
INPUT = "IMAGE"
# SCORES = (anomaly_score, defect_probability, defect_threshold); HEATMAP at the input size;
# INFO = JSON {model_version, class_probs, top_class, provisional_classes} (class sets differ
# between versions).
OUTPUTS = ("SCORES", "HEATMAP", "INFO")


def model_name(product: str) -> str:
    """Triton model name of a product (letters, digits, '_' only)."""
    return "linesight_" + re.sub(r"[^A-Za-z0-9_]", "_", product or "default")


def config_pbtxt(name: str, *, max_batch: int, max_queue_delay_us: int, instances: int = 1) -> str:
    preferred = sorted({b for b in (4, 8, 16, 32) if b <= max_batch} | {max_batch})
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
version_policy: {{ all {{ }} }}
input [
  {{ name: "{INPUT}" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }}
]
output [
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] }},
  {{ name: "HEATMAP" data_type: TYPE_FP32 dims: [ -1, -1 ] }},
  {{ name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred)} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
"""


def versions(repository: Path, name: str) -> dict[int, str]:
    """Integer version -> LineSight model version of what is on disk."""
    out: dict[int, str] = {}
    root = repository / name
    if not root.is_dir():
        return out
    for child in root.iterdir():
        marker = child / "model_version.txt"
        if child.is_dir() and child.name.isdigit() and marker.exists():
            out[int(child.name)] = marker.read_text().strip()
    return out


def add_version(
    repository: Path,
    bundle: ModelBundle,
    *,
    loader_spec: str,
    max_batch: int = 16,
    max_queue_delay_us: int = 2000,
    threads: int = 0,
) -> tuple[str, int]:
    """Copy an export in as the next integer version; returns (model name, version number)."""
    name = model_name(bundle.product)
    root = repository / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.pbtxt").write_text(
        config_pbtxt(name, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us)
    )
    number = max(versions(repository, name), default=0) + 1
    # Numbers are never reused: a retired directory may still exist half-deleted.
    while (root / str(number)).exists():
        number += 1
    staging = root / f".staging-{number}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle.directory, staging / "export")
    shutil.copy2(MODEL_PY, staging / "model.py")
    (staging / "loader.txt").write_text(loader_spec + "\n")
    if threads > 0:  # the runtime's intra-op threads inside Triton's python backend
        (staging / "threads.txt").write_text(f"{threads}\n")
    (staging / "model_version.txt").write_text(bundle.version + "\n")
    staging.rename(root / str(number))  # Triton never sees a half-written version
    return name, number


def remove_version(repository: Path, name: str, number: int) -> None:
    shutil.rmtree(repository / name / str(number), ignore_errors=True)


def build_repository(
    repository: Path, bundles: list[ModelBundle], *, loader_spec: str, max_batch: int = 16
) -> dict[str, list[int]]:
    """A repository from export directories (training's `--triton-repo` output, the Dockerfile)."""
    made: dict[str, list[int]] = {}
    for bundle in bundles:
        name, number = add_version(repository, bundle, loader_spec=loader_spec, max_batch=max_batch)
        made.setdefault(name, []).append(number)
    return made
