# xpunet — two commands: `make demo` and `make test`.  Everything they need is
# installed here (apt packages, the virtual environment, code generation), so
# both work on a fresh Debian bookworm machine as root.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.xpunet-installed
GEN_STAMP := libs/xpunet/_gen/.stamp
# p4runtime-shell (softipu conformance test) pins protobuf < 3.21: its own venv.
P4SHELL_VENV := .venv-p4shell
P4SHELL_STAMP := $(P4SHELL_VENV)/.installed
P4SHELL_REQS := tests/integration/softipu/p4shell-requirements.txt
# Debian packages: the kernel tools the host target and the tests drive, and
# real BGP daemons used as peers.
APT_PACKAGES := iproute2 nftables conntrack procps containernetworking-plugins iptables iputils-ping gcc libc6-dev
PYTEST_ARGS ?=
# The compiled CNI forwarding shim (docs/cni.md "Agent"); falls back to the Python plugin beside it.
# Static: the same binary is installed on nodes (deploy/kustomize, Containerfile), whatever their libc.
CNI_SHIM := $(BIN)/xpunet-cni-shim
CNI_SHIM_CFLAGS := -O2 -Wall -Wextra -Werror -std=c11 -static

.PHONY: demo test lint typecheck contracts unit integration e2e bench deps apt venv gen clean cni-shim

demo: deps
	$(BIN)/xpunetctl demo

test: deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs services tests tools $(wildcard bench/*.py)
	$(BIN)/lint-imports

unit: deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: deps
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: deps
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

bench: deps
	for b in bench/*.py; do $(PY) $$b || exit 1; done

deps: apt $(STAMP) $(GEN_STAMP) $(P4SHELL_STAMP) $(CNI_SHIM)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing apt packages:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "note: not root, cannot install apt packages:$$missing (root-only tests will be skipped)"; \
		fi; \
	fi

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(GEN_STAMP)
	touch $@

$(GEN_STAMP): $(STAMP) tools/gen_protos.py $(shell find protos -name "*.proto")
	$(PY) tools/gen_protos.py
	mkdir -p $(dir $@) && touch $@

cni-shim: $(CNI_SHIM)

$(CNI_SHIM): cni-shim/xpunet-cni.c $(STAMP)
	$(CC) $(CNI_SHIM_CFLAGS) -DXPUNET_CNI_FALLBACK='"$(abspath $(BIN))/xpunet-cni"' -o $@ $<

$(P4SHELL_STAMP): $(P4SHELL_REQS)
	test -x $(P4SHELL_VENV)/bin/python || $(PYTHON) -m venv $(P4SHELL_VENV)
	$(P4SHELL_VENV)/bin/python -m pip install -q -r $(P4SHELL_REQS)
	touch $@

clean:
	rm -rf $(VENV) $(P4SHELL_VENV) libs/xpunet/_gen build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
