# Thin wrappers: every target is a CLI call you can also run yourself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.setup-done
SETUP_INPUTS := requirements/lock.txt requirements/lock.in requirements/dev.in \
	requirements/overrides.txt \
	$(wildcard src/*/pyproject.toml)
# The repository's own packages, listed once (the images exclude them the same way).
LOCAL_PACKAGES := $(shell grep -v '^\#' requirements/local-packages.txt)

.PHONY: setup run lock-run serve test lint format bench bench-peers images lock lock-gpu uv-for-lock clean

# DVC's default remote: a folder outside the repository, shared by every clone on
# this machine, recorded in .dvc/config.local (not in git). Override: make setup DVC_REMOTE=…
DVC_REMOTE ?= $(HOME)/.cache/mega-pipeline/dvc-remote

## setup: create .venv and install every container (editable) and the dev tools from the lock
setup: $(STAMP)
	@grep -qs "remote = " .dvc/config.local || { \
		$(BIN)/dvc remote add --local --default local "$(DVC_REMOTE)" && \
		echo "setup: DVC default remote 'local' → $(DVC_REMOTE)"; }

# Each long step is announced: a first install runs for minutes with --quiet output.
# --compile-bytecode: uv writes no .pyc by default, and with PYTHONDONTWRITEBYTECODE set
# (as on the reference machines) every process then recompiles what it imports: 12-15 s
# to import TensorFlow instead of about 5 s (docs/performance.md).
$(STAMP): $(SETUP_INPUTS)
	@echo "setup: Python environment $(VENV) (created if missing)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing uv $(UV_VERSION) into $(VENV)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "setup: installing the locked dependencies (minutes the first time, seconds once cached)"
	@$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode \
		-c requirements/lock.txt --override requirements/overrides.txt -r requirements/lock.in
	@touch $@
	@echo "setup: done (.venv)"

## run: set up, then run the whole pipeline (stages whose inputs are unchanged are skipped)
run: setup
	$(BIN)/mega run

## lock-run: regenerate dvc.lock and reports/ as a fresh clone's default run makes them
## (after changing a stage's code or params.yaml; commit the result)
lock-run: setup
	scripts/lock-run.sh

## serve: the API and the web page on http://127.0.0.1:8000
serve: setup
	$(BIN)/mega serve

## test: set up, then every test tier (unit, integration, behaviour, e2e, browser, containers),
## with coverage (the floor is fail_under in pyproject.toml)
test: setup
	@scripts/ensure-chromium.sh
	$(BIN)/pytest --cov

## lint: ruff (style, imports, complexity), ruff format, mypy; .ci/run runs it first
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/common/common src/data-collector/collector src/data-processor/processor \
		src/model-training/trainer src/api-service/api_service src/workflow/workflow
	$(BIN)/mypy benchmarks

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## images: build every image of docker-compose.yml, tagged with the git sha (docker, else
## podman), and print each one's size and build time (`mega build`; --push: docs/containers.md)
images: setup
	$(BIN)/mega build

## bench: every benchmark script (each prints name: ratio against its baseline)
## (peers.py aside: it installs the peers and runs for about 8 min, more on a first run; see bench-peers)
bench: setup
	@for script in $(filter-out benchmarks/peers.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

## bench-peers: ours vs img2dataset, Keras' loader, FastAPI/LitServe/BentoML and Dask, side by
## side (each peer in a cached venv of its own; a registered model first: make run)
bench-peers: setup
	$(BIN)/python benchmarks/peers.py

## lock: re-compile requirements/lock.txt, then the GPU lock, after changing a pyproject.toml
## or dev.in
lock: uv-for-lock
	$(BIN)/uv pip compile requirements/lock.in --python-version 3.11 --quiet \
		--override requirements/overrides.txt --no-emit-index-url --no-emit-find-links \
		--custom-compile-command "make lock" \
		$(foreach p,$(LOCAL_PACKAGES),--no-emit-package $(p)) -o requirements/lock.txt
	@$(MAKE) --no-print-directory lock-gpu

# The model-training image's GPU variant (src/Dockerfile, ACCELERATOR=gpu): the files that
# branch installs, resolved for the image's platform (Linux x86_64, glibc 2.28 or newer) and
# constrained by lock.txt, so every package both locks hold has the same pin.
GPU_LOCK ?= requirements/lock-gpu.txt
GPU_INPUTS := src/common/pyproject.toml src/model-training/pyproject.toml requirements/gpu.in

## lock-gpu: re-compile only requirements/lock-gpu.txt (make lock runs it too)
lock-gpu: uv-for-lock
	$(BIN)/uv pip compile $(GPU_INPUTS) --constraint requirements/lock.txt \
		--excludes requirements/local-packages.txt --override requirements/overrides.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet --no-emit-index-url \
		--no-emit-find-links --custom-compile-command "make lock" -o $(GPU_LOCK)

uv-for-lock:
	@test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"; }

clean:
	rm -rf $(VENV) .mega .pytest_cache .ruff_cache .mypy_cache
