# The two commands a newcomer needs:  make run   and   make test
# Both create .venv, install daqkd with pinned torch/torchvision, and make sure Fashion-MNIST is present.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.daqkd-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS   ?=

.PHONY: setup data run test test-fast test-kernels test-heavy lint sync bench bench-export device-pack device-grid clean clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's dataset-fashion-mnist when apt is usable, otherwise torchvision's download into ./data.
data: $(STAMP)
	@if [ -f $(FMNIST) ] || ls data/fashion_mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		echo "Fashion-MNIST: present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; then \
		echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; then \
		echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist"; \
	else \
		echo "Fashion-MNIST: apt not usable, downloading with torchvision into data/"; \
		$(PY) -m daqkd.data.download fashion_mnist data; \
	fi

run: data
	$(PY) -m daqkd.run $(ARGS)

# One worker per core (pytest-xdist), one torch thread each.
test: data
	$(PY) -m pytest -q -n auto $(ARGS)

# The tests that compare floats from two computation paths, again with the other CPU kernels of
# PyTorch and oneDNN (AVX2 where this machine has AVX-512, and the plain C kernels): a bound that
# holds only for this machine's summation order fails here, not on a user's machine. CI runs it.
test-kernels: data
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -n auto -m kernels -p no:cacheprovider $(ARGS)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -n auto -m kernels -p no:cacheprovider $(ARGS)

# Everything but what trains (the `slow` marker): a minute.
test-fast: data
	$(PY) -m pytest -q -n auto -m "not slow" $(ARGS)

# Also the tests too long for CI (every model at W8A8): DAQKD_HEAVY=1.
test-heavy: data
	DAQKD_HEAVY=1 $(PY) -m pytest -q -n auto $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check daqkd tests

bench: data
	$(PY) -m daqkd.bench $(ARGS)

# What the exported student costs in ONNX Runtime against its teacher: FP, exact and integer forms.
bench-export: setup
	$(PY) -m daqkd.bench_export $(ARGS)

# A lent GPU machine has torch, lightning and torchvision but no network: .device/ carries the rest
# (wheels of the versions installed here, and Fashion-MNIST). Then, on that machine:
#   MINUTES=9 OUT=<folder> bash scripts/device_grid.sh     (the GPU speed table and the long-budget grid)
device-pack: data
	rm -rf .device/wheels && mkdir -p .device/wheels .device/fashion-mnist
	$(PY) -m pip wheel --quiet --no-deps -w .device/wheels \
		hydra-core==$$($(PY) -c 'import hydra; print(hydra.__version__)') \
		omegaconf==$$($(PY) -c 'import omegaconf; print(omegaconf.__version__)') \
		antlr4-python3-runtime==$$($(PY) -c 'import importlib.metadata as m; print(m.version("antlr4-python3-runtime"))')
	cp $$(ls $(dir $(FMNIST))*-ubyte.gz 2>/dev/null || ls data/fashion_mnist/*-ubyte*) .device/fashion-mnist/
	du -sh .device

# The same script on this machine, as a check of every step at a tiny size (the venv's python as python3).
device-grid: device-pack
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SMOKE=1 OUT=outputs/device_grid_smoke bash scripts/device_grid.sh

# Uploads every offline W&B run under outputs/ and multirun/ (needs WANDB_API_KEY or `wandb login`).
sync: $(STAMP)
	@runs="$$(find outputs multirun -type d -name 'offline-run-*' 2>/dev/null)"; \
	if [ -z "$$runs" ]; then echo "no offline W&B runs under outputs/ or multirun/"; \
	else $(VENV)/bin/wandb sync $$runs; fi

# Never touches results (outputs/, multirun/) or caches: `make clean-cache` removes the cached teachers.
clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

clean-cache:
	rm -rf "$${DAQKD_CACHE:-$${DAQKD_ROOT:-.}/.cache}"
