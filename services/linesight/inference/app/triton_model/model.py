# mypy: ignore-errors
"""Triton python-backend model: one LineSight export version (ONNX via onnxruntime + PatchCore scoring).

Copied by linesight.inference.app.triton_repo into `<repository>/<model>/<n>/model.py`. Each integer
version directory carries its own export (`export/`), the LineSight version string and the
loader, so versions of one product load side by side and are addressed by number.
Errors travel in the responses of the batch that caused them; the server keeps serving.
"""

import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the python backend


def _resolve(spec, directory):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        path = directory / (module_name.replace(".", "/") + ".py")
        mod_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[module_name] = module
        mod_spec.loader.exec_module(module)
    target = getattr(module, attr)
    return getattr(target, "load", target)


def _parameters(fn):
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        export_dir = version_dir / "export"
        self.model_version = (version_dir / "model_version.txt").read_text().strip()
        loader = _resolve((version_dir / "loader.txt").read_text().strip(), export_dir)
        kwargs = {}
        threads_file = version_dir / "threads.txt"
        if threads_file.exists():
            threads = int(threads_file.read_text().strip())
            if "threads" in _parameters(loader):
                kwargs["threads"] = threads
            try:  # numpy's BLAS too (PatchCore's kNN): spinning helpers only steal the cores
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=threads, user_api="blas")
            except Exception:
                pass
        self.predictor = loader(export_dir, **kwargs)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        try:
            images = [img for arr in arrays for img in arr]
            preds = self.predictor.predict(images)
            if len(preds) != len(images):
                raise RuntimeError(f"model returned {len(preds)} predictions for {len(images)} images")
        except Exception as exc:  # the batch fails, the model stays loaded
            err = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, start = [], 0
        for arr in arrays:
            part = preds[start : start + len(arr)]
            start += len(arr)
            scores = np.array(
                [[p.anomaly_score, p.defect_probability, getattr(p, "defect_threshold", 0.5)] for p in part],
                dtype=np.float32,
            )
            heat = np.stack([np.asarray(p.heatmap, dtype=np.float32) for p in part])
            info = np.array(
                [
                    [
                        json.dumps(
                            {
                                "model_version": self.model_version,
                                "class_probs": {str(k): float(v) for k, v in p.class_probs.items()},
                                "top_class": str(getattr(p, "top_class", "good")),
                                "provisional_classes": [
                                    str(c) for c in (getattr(p, "provisional_classes", None) or ())
                                ],
                                "provisional_examples": {
                                    str(k): int(v)
                                    for k, v in (getattr(p, "provisional_examples", None) or {}).items()
                                },
                                "min_examples": int(getattr(p, "min_examples", 0) or 0),
                            }
                        ).encode()
                    ]
                    for p in part
                ],
                dtype=np.object_,
            )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", scores),
                        pb_utils.Tensor("HEATMAP", heat),
                        pb_utils.Tensor("INFO", info),
                    ]
                )
            )
        return responses

    def finalize(self):
        self.predictor = None
