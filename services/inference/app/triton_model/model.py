"""Triton python-backend model: one LineSight export version (ONNX via onnxruntime + PatchCore scoring).

Copied by linesight.inference.app.triton_repo into `<repository>/<model>/<n>/model.py`. Each integer
version directory carries its own export (`export/`), the LineSight version string, the loader and
the class order of CLASS_PROBS, so versions of one product load side by side and are addressed by
number. Errors travel in the responses of the batch that caused them; the server keeps serving.
"""

import importlib
import importlib.util
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


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        export_dir = version_dir / "export"
        self.model_version = (version_dir / "model_version.txt").read_text().strip()
        self.classes = json.loads((version_dir / "classes.json").read_text())
        loader = _resolve((version_dir / "loader.txt").read_text().strip(), export_dir)
        self.predictor = loader(export_dir)

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
        width = max(1, len(self.classes))
        responses, start = [], 0
        for arr in arrays:
            part = preds[start : start + len(arr)]
            start += len(arr)
            scores = np.array([[p.anomaly_score] for p in part], dtype=np.float32)
            defect = np.array([[p.defect_probability] for p in part], dtype=np.float32)
            probs = np.zeros((len(part), width), dtype=np.float32)
            for i, p in enumerate(part):
                for j, name in enumerate(self.classes):
                    probs[i, j] = float(p.class_probs.get(name, 0.0))
            heat = np.stack([np.asarray(p.heatmap, dtype=np.float32) for p in part])
            version = np.array([[self.model_version.encode()] for _ in part], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ANOMALY_SCORE", scores),
                        pb_utils.Tensor("DEFECT_PROBABILITY", defect),
                        pb_utils.Tensor("CLASS_PROBS", probs),
                        pb_utils.Tensor("HEATMAP", heat),
                        pb_utils.Tensor("MODEL_VERSION", version),
                    ]
                )
            )
        return responses

    def finalize(self):
        self.predictor = None
