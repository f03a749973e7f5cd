# The one entry point. `make test` and `make demo` each set up .venv on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: test demo lint typecheck fuzz bench bytecode chaos clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The package's modules compiled once, not in every process: where PYTHONDONTWRITEBYTECODE
# is set (it is on this project's machines) Python caches no bytecode itself, and every
# node, inspector and test process compiled the whole package again (~70 ms a start).
# A stale file is ignored by Python and rewritten here the next time.
bytecode: $(STAMP)
	$(VPY) -m compileall -q crdtstore transport bindings

test: bytecode
	$(VENV)/bin/lint-imports --no-cache
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy crdtstore transport bindings chaos
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(VPY) -m pytest -q tests

demo: bytecode
	$(VENV)/bin/crdtstore demo

lint: $(STAMP)
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

typecheck: $(STAMP)
	$(VPY) -m mypy crdtstore transport bindings chaos

# Fuzz the decoders, then the engine's message handler, SECONDS each: make fuzz SECONDS=300
SECONDS ?= 60
fuzz: $(STAMP)
	$(VPY) -m pip install --quiet -e '.[fuzz]'
	$(VPY) fuzz/fuzz_decode.py -max_total_time=$(SECONDS)
	$(VPY) fuzz/fuzz_engine.py -max_total_time=$(SECONDS)

bench: bytecode
	$(VPY) -m pip install --quiet -e '.[bench]'
	$(VPY) bench/run_all.py

# The long fault run (needs root: network namespaces and tc), one run per seed, exit 1 if
# any fails: make chaos SEEDS="1 2 3" DURATION=90 NODES=5. A short run is in `make test`.
SEEDS    ?= 1 2 3
DURATION ?= 90
NODES    ?= 5
chaos: bytecode
	$(VPY) -m chaos.run $(foreach s,$(SEEDS),--seed $(s)) --duration $(DURATION) --nodes $(NODES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
