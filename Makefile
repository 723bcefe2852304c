# fedge: the README's commands. `make demo`, `make test`, `make bench`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedge-installed
ARGS ?=

.PHONY: install mosquitto browser lint test bench demo clean help

help:
	@echo "make install  create $(VENV) with fedge and all extras, and make sure Mosquitto is present"
	@echo "make lint     install, then ruff (agent cloud bench tests) and mypy (agent cloud bench)"
	@echo "make test     install, lint, then run the whole pytest suite"
	@echo "make bench    install, then run every benchmark (results in bench/results/)"
	@echo "make demo     install, then the end-to-end demo (ARGS=--quick for a short one)"

install: $(STAMP) mosquitto browser

# torch is pinned to the CPU build on the local disk before the extras ask for a range.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[edge,cloud,fl,simulation,dev]'
	touch $(STAMP)

# Tests and benchmarks start their own broker from the mosquitto binary.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Mosquitto is missing: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; \
	else \
		echo "Mosquitto is missing. Install it, then run make again:"; \
		echo "    sudo apt-get install -y mosquitto mosquitto-clients"; \
		exit 1; \
	fi

# The dashboard's test drives a real headless browser: Debian's chromium and its driver (browser downloads are
# not possible everywhere fedge is built). Without root it says what to install and goes on: only that test needs it.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "chromium or chromedriver is missing: installing them with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "The dashboard test needs a browser: sudo apt-get install -y chromium chromium-driver"; \
	fi

# Style and types are checked before any test runs (config: [tool.ruff] and [tool.mypy] in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check agent cloud bench tests
	$(VENV)/bin/mypy agent cloud bench

test: install lint
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench $(ARGS)

# The closed loop on one machine (fedge-cloud fl loop): the cloud model trained into ./store if missing, a private
# broker with the fleet's ACL, the coordinator with 2 workers, 4 agents from the shipped profiles, federated rounds
# and signed rollouts; the dashboard on a free port meanwhile. Report: demo-report/report.md. ARGS=--quick: ~1 min.
demo: install
	$(VENV)/bin/fedge-cloud fl loop --out demo-report --dashboard 0 $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
