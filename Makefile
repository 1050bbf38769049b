# Every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in pyproject.toml. A local wheel (pip's find-links) is used when there is one;
# otherwise the CPU build comes from PyTorch's CPU index, never a multi-GB CUDA build from PyPI.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
# Extra spd-run options for run-tms, e.g. make run-tms ARGS="--override steps=2000"
ARGS ?=

.PHONY: install install-dev check format type test test-all run-tms pretrain-llama bench gpu-wheels clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-index --no-deps "torch==2.13.0" 2>/dev/null \
		|| $(BIN)/pip install --quiet "torch==2.13.0" --index-url $(TORCH_INDEX)
	$(BIN)/pip install --quiet -e .
	@[ -f spd/scripts/sweep_params.yaml ] || cp spd/scripts/sweep_params.yaml.example spd/scripts/sweep_params.yaml 2>/dev/null || true
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## the package and its runtime dependencies

install-dev: $(VENV)/.installed-dev  ## plus pytest, ruff, basedpyright, pre-commit

check: install-dev  ## lint, format check, type check and the import-stage check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/basedpyright
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_layers.py

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: install-dev
	$(BIN)/basedpyright

test: install-dev  ## the default suite (no slow tests)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test-all: install-dev  ## everything, including the slow full-length experiments
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

run-tms: install  ## the main job: decompose tms_5-2 here, print the run directory and MMCS/ML2R (ARGS: more spd-run options)
	$(BIN)/spd-run --experiments tms_5-2 --local $(ARGS)

# The whole-model target: ss_llama_simple_mlp-$(LAYERS)L (LAYERS 1 or 2), pretrained on the offline
# story corpus (built first when missing) into <output root>/pretrain/<name>/model.
LAYERS ?= 2
pretrain-llama: install  ## pretrain the 2-layer Llama target on the offline corpus (LAYERS=1: the 1-layer one)
	@[ -d "$${SPD_OUT_DIR:-spd_out}/lm_offline_example" ] || $(BIN)/python spd/experiments/lm/make_offline_example.py
	$(BIN)/spd-pretrain spd/experiments/lm/pretrain/ss_llama_simple_mlp-$(LAYERS)L.yaml $(ARGS)

bench: install  ## steps/s and peak memory of the toy experiments and the LM example (see docs/benchmarks.md; ARGS: e.g. --ref COMMIT)
	$(BIN)/python scripts/benchmark.py $(ARGS)

# The packages scripts/gpu_check.sh needs on a GPU machine that has torch but cannot download:
# the versions installed here, as wheels for that machine's Python (3.12, x86-64 Linux).
GPU_PYTHON ?= 3.12
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection typing-extensions python-dotenv
gpu-wheels: install  ## download into .whl/ what scripts/gpu_check.sh installs on a GPU machine
	$(BIN)/pip download --quiet --dest .whl --only-binary=:all: --no-deps \
		--python-version $(GPU_PYTHON) --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		$(foreach p,$(GPU_WHEELS),"$(p)==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("$(p)"))')")

clean-venv:
	rm -rf $(VENV)
