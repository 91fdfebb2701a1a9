# guestinit: two commands do everything on a fresh Debian 12 machine (as root):
#   make run    install what is missing, build the Kata guest image, boot it in QEMU, print the timeline
#   make test   install what is missing, lint, type-check, run the whole suite (unit, then QEMU boots)
# Set-up steps are idempotent and quick when everything is already there.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CACHE ?= $(HOME)/.cache/guestinit
TOOLS := $(CACHE)/tools
MKOSI_STAMP := $(TOOLS)/mkosi/.version
VENV_STAMP := $(VENV)/.installed
PROTO_STAMP := guestinit/fabric/proto/fabric_pb2.py
HOST_PACKAGES := qemu-system-x86 qemu-utils cpio zstd lz4 kmod busybox-static erofs-utils libvirt-clients \
	ovmf binutils gcc make debian-archive-keyring apt dpkg iproute2 libxml2-utils reprepro \
	e2fsprogs fdisk xz-utils libc6-dev libdevmapper-dev libseccomp-dev
PYTEST_ARGS ?=
export GUESTINIT_CACHE := $(CACHE)

.PHONY: all setup host-packages mkosi venv proto run test test-erofs lint unit fuzz fuzz-short boot-tests bench build clean docs

all: run

setup: host-packages mkosi venv proto

host-packages:
	@missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

mkosi: $(MKOSI_STAMP)
$(MKOSI_STAMP): scripts/fetch-mkosi.sh
	scripts/fetch-mkosi.sh $(TOOLS)

venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $@

proto: $(PROTO_STAMP)
$(PROTO_STAMP): $(wildcard guestinit/fabric/proto/*.proto) | $(VENV_STAMP)
	@if ls guestinit/fabric/proto/*.proto >/dev/null 2>&1; then \
		$(VENV)/bin/python -m guestinit.fabric.protogen; \
	fi

build: setup
	$(VENV)/bin/guestctl build kata

run: setup
	$(VENV)/bin/guestctl build kata --if-needed
	$(VENV)/bin/guestctl boot --shutdown

lint: setup
	$(VENV)/bin/ruff check guestinit tests
	$(VENV)/bin/ruff format --check guestinit tests
	$(VENV)/bin/mypy
	$(VENV)/bin/actionlint -shellcheck $(VENV)/bin/shellcheck .github/workflows/*.yml

unit: setup
	$(VENV)/bin/pytest -m "not boot" $(PYTEST_ARGS)

boot-tests: setup
	$(VENV)/bin/pytest -m boot $(PYTEST_ARGS)

# Every tests/fuzz/fuzz_*.py target under atheris (libFuzzer), or hypothesis where atheris is
# missing: FUZZ_TOTAL executions spread over the targets, one summary line each; exit 1 on a finding.
FUZZ_TOTAL ?= 1000000
fuzz: setup
	$(VENV)/bin/python tests/fuzz/run.py --total $(FUZZ_TOTAL)

# The short pass `make test` runs: a few thousand executions a target.
fuzz-short: setup
	$(VENV)/bin/python tests/fuzz/run.py --runs 3000 --max-time 30

test: lint unit fuzz-short boot-tests

# The boot tests of Kata's rootfs-image form too, compiling its kernel when it is not cached
# (about 20 minutes on 2 cores; `make test` runs them only once that kernel is in the cache).
test-erofs: setup
	GUESTINIT_TEST_EROFS=1 $(VENV)/bin/pytest -m boot -k erofs $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/guestctl bench --runs 3 --json build/bench.json --svg build/bench.svg

docs: setup
	$(VENV)/bin/guestinit params --markdown > docs/kernel-cmdline.md
	$(VENV)/bin/guestinit services --markdown > docs/services.md
	$(VENV)/bin/guestctl build --markdown > docs/build.md
	$(VENV)/bin/python -m guestinit.init.tomlfiles image/mkosi.extra
	(echo '# The GPU image copy (guestinit.fabricmanager.config, NVLink GPU modes): FABRIC_MODE=0, log to syslog.'; \
		$(VENV)/bin/python -m guestinit.fabric.render fabricmanager-cfg --set FABRIC_MODE=0 --set LOG_FILE_NAME=) \
		> image/gpu/mkosi.extra/etc/guestinit/gpu/fabricmanager.cfg

clean:
	rm -rf build
