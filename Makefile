# Everything a fresh Debian machine needs, as root: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SANDBOX := scripts/sandbox
STAMP := $(VENV)/.installed

.PHONY: all deps venv demo demo-docker demo-overlay demo-fleet test test-long lint unit wheel-check bench clean pictures

all: test

# System packages the demo and tests use (ip, ping, unshare, nft, Graphviz's dot;
# dockerd, podman, runc and a static busybox for the container engine tests; etcd-server for
# the fleet tests, which start their own members), installed only when
# missing. A policy-rc.d that refuses every start is in place during the install
# (unless the machine has its own): installing docker.io must not start dockerd
# here, which would change this machine's network (docker0, its firewall rules),
# nor etcd-server its etcd.service on this machine's port 2379.
POLICY_RC := /usr/sbin/policy-rc.d
deps:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v ping >/dev/null 2>&1 || missing="$$missing iputils-ping"; \
	command -v unshare >/dev/null 2>&1 || missing="$$missing util-linux"; \
	command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	command -v dot >/dev/null 2>&1 || missing="$$missing graphviz"; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v podman >/dev/null 2>&1 || missing="$$missing podman"; \
	command -v runc >/dev/null 2>&1 || missing="$$missing runc"; \
	test -x /bin/busybox || missing="$$missing busybox-static"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ ! -e $(POLICY_RC) ]; then \
	    trap 'rm -f $(POLICY_RC)' EXIT; \
	    printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) && chmod 0755 $(POLICY_RC); \
	  fi; \
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

# The seed example with real Docker containers (dockerd inside the sandbox).
demo-docker: deps venv
	$(SANDBOX) scripts/demo-docker.sh

# Three machines in one sandbox sharing overlay networks (examples/overlay).
demo-overlay: deps venv
	$(SANDBOX) scripts/demo-overlay.sh

# Three machines on a 3-member etcd in one sandbox: push, move, a machine
# dropped when its lease expires and taken back (docs/fleet.md).
demo-fleet: deps venv
	$(SANDBOX) scripts/demo-fleet.sh

lint: venv
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy reconciler

unit: venv
	$(BIN)/pytest -q -m "not kernel"

# The committed tree as a wheel in a fresh venv, run from outside the checkout
# (it needs the package index for the wheel's dependencies); see the script.
wheel-check: deps
	PYTHON=$(PYTHON) scripts/wheel-check

test: deps venv lint wheel-check
	$(SANDBOX) $(BIN)/pytest -q

# The property-based tests explored much deeper (tens of minutes).
test-long: deps venv
	HYPOTHESIS_PROFILE=long $(SANDBOX) $(BIN)/pytest -q

# The README's picture of examples/shop.yaml (the spec alone: no root, no kernel).
pictures: deps venv
	$(BIN)/netapply graph examples/shop.yaml -o docs/shop.svg

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Side-by-side benchmark (each measurement in its own sandbox); see bench/run.py.
bench: deps venv
	$(BIN)/python bench/run.py
	$(SANDBOX) env PYTHONPATH=. $(BIN)/python bench/watch_latency.py
	$(SANDBOX) $(BIN)/python bench/runtimes.py
	$(SANDBOX) env PYTHONPATH=. $(BIN)/python bench/etcd_fleet.py
