# Two entry points: `make demo` (the main job on the embedded synthroad default) and `make test`.
# Both create the virtualenv when it is missing. It lives outside the clone, keyed by a hash of
# requirements.txt, so a second run (or a second clone) reuses it.
PYTHON ?= python3.11
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
VENV ?= $(HOME)/.cache/csl_ros/venv-$(REQ_HASH)
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
# OpenMP threads that spin-wait make torch ~20x slower on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test venv

$(VENV)/.installed:
	@echo "creating virtualenv $(VENV) (first run only)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet "pip>=24"
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed
	@$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . >$(VENV)/editable.log 2>&1 || (cat $(VENV)/editable.log; exit 1)

demo: venv
	$(BIN)/csl-ros demo --out $(DEMO_OUT)

test: venv
	$(BIN)/python -m pytest test $(PYTEST_ARGS)
