# Fresh-machine entry points: `make demo` (a short CPU training run) and `make test`.
# Each creates .venv on first use. torch is installed first and pinned, so a machine
# without CUDA gets the CPU build; GPU users: see "Install on a GPU machine" in README.md.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= dev,alfworld
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The paper's pipeline on a CPU: a deliberately weak supervised start (half its action labels flipped),
# then PPO from it, with held-out success before and after in the closing table (conf/demo.yaml).
demo: $(STAMP)
	$(VENV)/bin/agentrl sft -c conf/study/numberline_sft_weak.yaml seed=1 trainer.out_dir=runs/demo/sft
	$(VENV)/bin/agentrl fit -c conf/demo.yaml

# The caches the tests build (the tiny model, generated ALFWorld games) stay inside the checkout, as in CI
# (.ci/run); an AGENTRL_CACHE already set wins.
test test-fast: export AGENTRL_CACHE ?= $(CURDIR)/.cache/agentrl

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu"

test-fast: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check agentrl tests tools

clean:
	rm -rf $(VENV) runs .pytest_cache .cache
