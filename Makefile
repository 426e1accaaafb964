# Set up, run and test the panel on a Debian 12/13 host, as root.
# Every target can be run again: once everything is there, `make install` changes nothing and
# makes no network call.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Debian's interpreter, not one under /root (pyenv and the like): the unprivileged user that
# runs gunicorn must be able to execute the venv's python.
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Python packages come at the versions in constraints.txt (all of them, dependencies too), so a
# release upstream cannot break a fresh install; `make lock` writes the file anew.
CONSTRAINTS := constraints.txt

# What running needs: the venv, gcc/make/libc.a for the busybox compile, the engine's tools
# (mkfs.ext4, losetup, ip, nft), Redis for the queue, debootstrap for the Debian template, and
# for backups tar, zstd, and rsync over ssh to a second destination; btrfs-progs for the btrfs
# storage backend's pool (docs/storage.md).
RUN_PACKAGES := python3-venv python3-dev build-essential e2fsprogs util-linux iproute2 procps \
	redis-server debootstrap ca-certificates nftables tar zstd rsync openssh-client btrfs-progs
# What only the tests add: the browser the page tests drive, ping for network checks, curl
# for the calls of docs/api.md (tests/api/test_docs.py), and sshd for a private one that
# backups are pushed to (tests/engine/test_backups.py; the test runs its own on a loopback
# port with its own config and keys, never the system's), and PostgreSQL's server for the
# second pass (scripts/with-postgres runs a private cluster for it, never the system's).
TEST_PACKAGES := chromium iputils-ping curl openssh-server postgresql
APT_PACKAGES := $(RUN_PACKAGES)

.PHONY: help install install-test apt-packages run test bench clean as-root lock node

help:
	@echo "make run     install what is missing, prepare the database, start the panel (Ctrl-C stops it)"
	@echo "make test    install what is missing, then ruff, mypy and pytest (PYTEST_ARGS='-k name' to select)"
	@echo "make install Debian packages, .venv and the project's Python packages (what running needs)"
	@echo "make bench   engine latency and density benchmarks (FULL=1 for the large run)"
	@echo "make clean   empty var/ (database, secret key, static files, redis data)"
	@echo "make node URL=https://panel.example/ TOKEN=...  join this host to the panel as a compute node (docs/cluster.md)"

as-root:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make: this target must run as root (the engine creates namespaces, cgroups, mounts)" >&2; \
		exit 1; \
	fi

install: apt-packages $(VENV)/.installed-run
	scripts/ensure-panel-user vpanel

install-test:
	@# Debian's postgresql would make and start a cluster "main" on port 5432 when it arrives;
	@# the tests run their own (scripts/with-postgres), so postgresql-common is told not to make
	@# it before the package comes (dpkg keeps this file: --force-confold in apt-packages).
	@if ! dpkg-query -W -f='$${Status}' postgresql-common 2>/dev/null | grep -q "install ok installed"; then \
		mkdir -p /etc/postgresql-common; \
		[ -e /etc/postgresql-common/createcluster.conf ] \
			|| echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
	fi
	$(MAKE) --no-print-directory apt-packages APT_PACKAGES="$(RUN_PACKAGES) $(TEST_PACKAGES)"
	$(MAKE) --no-print-directory $(VENV)/.installed-dev

# apt-get only when a package is missing: dpkg-query asks the local database, not the network.
apt-packages:
	@missing=(); \
	for pkg in $(APT_PACKAGES); do \
		status=$$(dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null || true); \
		[ "$$status" = "install ok installed" ] || missing+=("$$pkg"); \
	done; \
	if [ $${#missing[@]} -gt 0 ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make install: missing Debian packages: $${missing[*]}; run as root" >&2; \
			exit 1; \
		fi; \
		echo "Installing Debian packages: $${missing[*]}"; \
		apt-get update; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$${missing[@]}"; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml or the constraints changed since the last install.
# --force-confold above: dpkg keeps a configuration file the project wrote before the package
# came (/etc/default/lxc-net for `make bench`) instead of asking, which fails without a terminal.
# editable_mode=compat: a plain path in a .pth file. setuptools' default finder imports pathlib,
# urllib and importlib.util at every interpreter start (13 of site's 16 ms, python -X importtime),
# which every `vserver` command paid (--help: 35.7 -> 30.5 ms median of 25).
EDITABLE := --config-settings editable_mode=compat
# Then `vserver` as vservers/engine/resident.py's LAUNCHER, over pip's console script: no site
# and no re before it hands a command to the resident server (vserver serve).
LAUNCHER := $(PY) -m vservers.engine.resident write-launcher $(VENV)/bin/vserver
$(VENV)/.installed-run: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(EDITABLE) -e .
	$(LAUNCHER)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) $(VENV)/.installed-run
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(EDITABLE) -e '.[dev,postgres]'
	$(LAUNCHER)
	touch $@

# Writes constraints.txt from a new venv with every extra; commit the result.
lock:
	rm -rf var/lock-venv
	$(PYTHON) -m venv var/lock-venv
	var/lock-venv/bin/pip install --quiet -e '.[dev,postgres]'
	{ echo "# Every Python package at the version make install takes (make lock writes it anew)."; \
	  var/lock-venv/bin/pip freeze --exclude-editable | grep -v '^vservers'; } > $(CONSTRAINTS)
	rm -rf var/lock-venv

run: as-root install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	scripts/ensure-template busybox
	@# On first start only: a small demo world (operator, tenants acme and globex); the
	@# generated password is printed once. The servers are really provisioned by the worker.
	$(PY) manage.py demo --if-empty --provision
	exec scripts/run-panel

# A compute node (docs/cluster.md): the node's packages and venv, then the join with the
# operator's one-time token; NODE_ARGS passes more (--env-file, --no-start, --broker, ...).
node: as-root install
	@if [ -z "$(URL)" ] || [ -z "$(TOKEN)" ]; then \
		echo "usage: make node URL=https://panel.example/ TOKEN=<the join token the operator was shown>" >&2; \
		exit 2; \
	fi
	$(PY) manage.py node join "$(URL)" "$(TOKEN)" $(NODE_ARGS)

# Two passes: everything but the multi-node tests on SQLite (the default database), then the
# tests of concurrency and allocation and the multi-node ones on a private PostgreSQL cluster
# made for the run and removed after it (scripts/with-postgres). A pass that PYTEST_ARGS leaves
# without tests (pytest's status 5) is no failure.
test: as-root install install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -m "not cluster" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	scripts/with-postgres $(VENV)/bin/pytest -m "both_databases or cluster" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Benchmarks (bench/README.md): our engine beside LXC, VPS beside host, the panel. The quick
# run takes under 10 minutes; FULL=1 is the large run. Not part of the tests: benchmarks time
# things, tests never do.
BENCH_PACKAGES := wrk lxc rsync busybox-static
bench: as-root install
	$(MAKE) --no-print-directory $(VENV)/.installed-dev
	@# LXC's package would bring up lxcbr0 on 10.0.3.0/24; the benchmarks use their own bridges
	@# in 198.18.0.0/15 only, so lxc-net is told not to make it before the package arrives.
	@if ! dpkg-query -W -f='$${Status}' lxc 2>/dev/null | grep -q "install ok installed"; then \
		mkdir -p /etc/default; \
		[ -e /etc/default/lxc-net ] || echo 'USE_LXC_BRIDGE="false"' > /etc/default/lxc-net; \
	fi
	$(MAKE) --no-print-directory apt-packages APT_PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/engine.py $(if $(FULL),--full,--quick)
	$(PY) bench/lxc.py $(if $(FULL),--full,--quick)
	$(PY) bench/cli.py $(if $(FULL),--full,--quick)
	$(PY) bench/overhead.py $(if $(FULL),--full,--quick)
	$(PY) bench/storage.py $(if $(FULL),--full,--quick)
	$(PY) bench/panel.py $(if $(FULL),--full,--quick)
	$(PY) bench/forker.py $(if $(FULL),--full,--quick)
	$(PY) bench/targets.py

# Refuses while the panel runs or while anything is mounted below var/ (a test's server
# left behind); --one-file-system keeps rm out of any mount all the same.
clean:
	@if [ -d var ]; then \
		var=$$(realpath var); \
		if awk -v d="$$var/" 'index($$5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then \
			echo "make clean: something is mounted below var/; unmount it first:" >&2; \
			awk -v d="$$var/" 'index($$5 "/", d) == 1 { print "  " $$5 }' /proc/self/mountinfo >&2; \
			exit 1; \
		fi; \
		if [ -f var/run/run-panel.pid ] && kill -0 "$$(cat var/run/run-panel.pid)" 2>/dev/null; then \
			echo "make clean: the panel is running (pid $$(cat var/run/run-panel.pid)); stop it first" >&2; \
			exit 1; \
		fi; \
		find var -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system -- {} +; \
		echo "var/ is empty"; \
	fi
