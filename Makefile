# clogfs — the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp

# Debian packages the project needs (Debian 12).
#  fuse3, libfuse3-dev, pkg-config: pyfuse3 is built against libfuse3
#  groff-base: man page lint; util-linux: losetup
#  qemu-system-x86, busybox-static: the real-kernel tests (tests/kernel, tools/clog-vm)
#  corosync, libcpg4: cluster mode and its tests
APT_PACKAGES := python3-venv python3-dev gcc pkg-config fuse3 libfuse3-dev groff-base \
	util-linux kmod qemu-system-x86 busybox-static corosync libcpg4 libquorum5 libvotequorum8 \
	iproute2 cpio zstd

.PHONY: deps apt venv test lint demo bench clean

deps: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,cluster]'
	@touch $(STAMP)

test: deps
	$(PY) -m pytest -p no:cacheprovider tests

lint: deps
	$(VENV)/bin/ruff check clogfs tests tools bench
	$(VENV)/bin/mypy

demo: deps
	$(PY) -m clogfs.demo

bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .cache build *.egg-info
