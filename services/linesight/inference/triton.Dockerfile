# syntax=docker/dockerfile:1.7
# linesight-triton: NVIDIA Triton Inference Server that can run LineSight's python-backend models.
# It runs as a sidecar of the inference pod (charts/linesight, `triton.enabled`): the inference
# service writes the model repository (services/linesight/inference/app/triton_repo.py) into a volume both
# containers share and loads each version with explicit model control; every version directory
# holds model.py (services/linesight/inference/app/triton_model/model.py), the export and loader.txt, whose
# loader (default linesight.vision.export:ExportedModel) model.py imports. So this image needs,
# besides Triton itself:
#   * Python 3.11 (LineSight's only Python, pyproject `requires-python`) with a python-backend stub
#     built for it: the 24.10 image's stub is built for its Ubuntu Python 3.10, and
#     linesight.vision does not run on 3.10. The stub comes from nvidia-pytriton 0.7.0, which
#     bundles the same Triton 2.51 (= 24.10) python backend; it is the stub the embedded stack
#     (services/linesight/common/embedded/triton.py) and the Triton integration tests run. Upgrade
#     TRITON_IMAGE and PYTRITON_VERSION together, to a pair with the same Triton version.
#   * the model's runtime: numpy<2 (the 2.51 python backend), onnxruntime, onnx (PatchCore builds
#     its nearest-row search as a graph) and what the export loader imports (opencv, scipy,
#     PyYAML); tests/unit/deploy/test_triton.py keeps this list in step with model.py and
#     linesight.vision's imports.
#   * the `linesight` package itself (no dependencies: only linesight.vision is imported here).
# Build context: the repository root (skaffold.yaml builds it in the `central` profile):
#   docker build -f services/linesight/inference/triton.Dockerfile -t linesight-triton .
# `--build-arg ONNXRUNTIME=onnxruntime-gpu` for CUDA (amd64 only); see docs/deployment.md.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
ARG ONNXRUNTIME=onnxruntime
ARG PYTRITON_VERSION=0.7.0
LABEL org.opencontainers.image.title="linesight-triton" \
      org.opencontainers.image.description="NVIDIA Triton with Python 3.11 and the LineSight model runtime (inference sidecar)" \
      org.opencontainers.image.source="https://github.com/linesight/linesight"
USER root
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 22.04 (jammy) ships Python 3.11 in universe; libpython3.11 is what the stub links.
# curl: the chart's probes run `curl http://127.0.0.1:<http port>/v2/health/...` in the container
# (Triton's HTTP endpoint only listens on the pod's loopback).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip
# The python backend starts its stub, whose embedded interpreter takes the first `python` on PATH
# as its home: the venv's, so models see the venv's site-packages.
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "numpy>=1.26,<2" "${ONNXRUNTIME}>=1.18" "onnx>=1.16" "opencv-python-headless>=4.9,<4.12" \
        "scipy>=1.11" "pyyaml>=6.0" "threadpoolctl>=3.1"
# The Python 3.11 stub replaces the image's 3.10 one next to the image's libtriton_python.so
# (pytriton's own libtriton_python.so links a second libtritonserver: not usable here). Of the
# wheel only the stub and the libcudart it links (hashed name, no clash with the image's CUDA) stay.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps "nvidia-pytriton==${PYTRITON_VERSION}" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && install -m 0755 "$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
        /opt/tritonserver/backends/python/triton_python_backend_stub \
 && install -d /opt/linesight/stub-libs \
 && cp "$site"/nvidia_pytriton.libs/libcudart-*.so* /opt/linesight/stub-libs/ \
 && pip uninstall -y nvidia-pytriton
ENV LD_LIBRARY_PATH=/opt/linesight/stub-libs${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
 && cd / && rm -rf /src \
 && python -c "import numpy, onnxruntime; from linesight.vision.export import ExportedModel" \
 && ldd /opt/tritonserver/backends/python/triton_python_backend_stub | { ! grep -q 'not found'; }
# The same unprivileged uid as every LineSight image (services/linesight/common/Dockerfile): inference and
# Triton share the model repository and the shared-memory regions (created 0600), so the pod runs
# both as 10001. Read-only root: the chart mounts /tmp, /dev/shm and the repository as emptyDirs.
RUN groupadd --system --gid 10001 linesight \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin linesight
ENV HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--model-control-mode=explicit"]
