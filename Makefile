# The whole set-up on a fresh machine is `make demo` or `make test`: both create .venv
# with pip when it is missing and install the project into it first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast check

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fer-ray demo --output demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The inner loop: every test that starts no Ray (a few minutes on 2 CPUs).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not ray"

# Every module imported is a declared dependency (deptry); the import layers hold (import-linter).
check: $(STAMP)
	$(VENV)/bin/deptry .
	$(VENV)/bin/lint-imports
