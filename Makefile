# The whole set-up on a fresh machine is `make demo` or `make test`: both create .venv
# with pip when it is missing and install the project into it first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast check browser

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fer-ray demo --output demo-output

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q

# Chromium for the page's browser tests (tests/test_page.py), from Debian's packages: Playwright
# cannot download its own browser without the internet. Where none can be installed, they skip.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "no Chromium could be installed: the browser tests (tests/test_page.py) will skip"

# The inner loop: every test that starts no Ray (a few minutes on 2 CPUs).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not ray"

# Every module imported is a declared dependency (deptry); the import layers hold (import-linter).
check: $(STAMP)
	$(VENV)/bin/deptry .
	$(VENV)/bin/lint-imports
