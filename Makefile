# Everything a fresh Debian machine needs, as root: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SANDBOX := scripts/sandbox
APT_PACKAGES := iproute2 iputils-ping util-linux nftables
STAMP := $(VENV)/.installed

.PHONY: all deps venv demo demo-overlay test test-long lint unit bench clean

all: test

# System packages the demo and tests use (ip, ping, unshare, nft), installed only when missing.
deps:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v ping >/dev/null 2>&1 || missing="$$missing iputils-ping"; \
	command -v unshare >/dev/null 2>&1 || missing="$$missing util-linux"; \
	command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: deps venv
	$(SANDBOX) scripts/demo.sh

# Three machines in one sandbox sharing overlay networks (examples/overlay).
demo-overlay: deps venv
	$(SANDBOX) scripts/demo-overlay.sh

lint: venv
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy reconciler

unit: venv
	$(BIN)/pytest -q -m "not kernel"

test: deps venv lint
	$(SANDBOX) $(BIN)/pytest -q

# The property-based tests explored much deeper (tens of minutes).
test-long: deps venv
	HYPOTHESIS_PROFILE=long $(SANDBOX) $(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Side-by-side benchmark (each measurement in its own sandbox); see bench/run.py.
bench: deps venv
	$(BIN)/python bench/run.py
	$(SANDBOX) env PYTHONPATH=. $(BIN)/python bench/watch_latency.py
