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

# The paper's pipeline in ~3 CPU-minutes: a supervised warm start on expert answers, then PPO from it.
demo: $(STAMP)
	$(VENV)/bin/agentrl sft -c conf/sft/numberline.yaml trainer.out_dir=runs/demo/sft
	$(VENV)/bin/agentrl fit -c conf/numberline.yaml policy.init_from=runs/demo/sft trainer.max_updates=5 \
		trainer.out_dir=runs/demo/ppo

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
