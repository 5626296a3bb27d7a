# Two commands matter: `make demo` and `make test`. Everything else serves them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uuidguard demo

test: $(STAMP) tools lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Real Prometheus and Alertmanager for the end-to-end tests, promtool and amtool for the
# artifact checks (DESIGN §8): Debian's packages, installed once when missing. policy-rc.d
# keeps the packages from starting their services; the tests start their own.
TOOLS := prometheus promtool prometheus-alertmanager amtool
tools:
	@missing=0; for t in $(TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing prometheus and prometheus-alertmanager (Debian packages)"; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-alertmanager >/dev/null); rc=$$?; \
		rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	-$(BIN)/uuidguard db stop 2>/dev/null
	rm -rf $(VENV) .uuidguard .mypy_cache .ruff_cache .pytest_cache
