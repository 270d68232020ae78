# hearscan: the README's two commands are `make demo` and `make test`; both set up first.
# `make setup` is idempotent: a second run only checks stamps and takes seconds.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.hearscan-setup
APT_STAMP := $(VENV)/.hearscan-apt
# Debian packages: a C++ compiler and ninja for the kernels, libsndfile for soundfile, and the speech and
# music synthesisers the mini task suite renders with (its recordings come from `apt-get download`).
APT_PACKAGES := g++ ninja-build libsndfile1 espeak-ng flite fluidsynth

# torch 2.11's wheel from PyPI is a CUDA build: 4.6 GB installed with its NVIDIA libraries, 6.5 GB at the
# install's peak (measured), so ≈ 7.3 GB for the whole set-up, whose other packages take 0.8 GB (pip's cache
# adds ≈ 3.5 GB unless PIP_NO_CACHE_DIR=1).
# Check the space before torch goes in, so a full disk is a clear error rather than pip's OSError halfway.
MIN_FREE_GB ?= 7.5
define DISK_CHECK
import shutil, sys
path, need = sys.argv[1], float(sys.argv[2])
free = shutil.disk_usage(path).free / 1e9
if free < need:
    sys.exit(f"error: make setup needs about {need:g} GB free where {path}/ lives (torch's CUDA wheel and its "
             f"NVIDIA libraries), but only {free:.1f} GB is free. Free some space (or point TMPDIR and the "
             f"checkout at a larger disk; PIP_NO_CACHE_DIR=1 saves pip's 3.5 GB cache), then run make setup again.")
endef
export DISK_CHECK

.PHONY: setup demo test test-fast bench clean-venv

setup: $(STAMP)

$(APT_STAMP):
	@if command -v apt-get >/dev/null 2>&1; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    SUDO=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "no apt-get: install $(APT_PACKAGES) with your package manager"; fi
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml Makefile | $(APT_STAMP)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -c "$$DISK_CHECK" $(VENV) $(MIN_FREE_GB)
	$(PIP) install -q torch==2.11.0 torchaudio==2.11.0
	# heareval / hearbaseline / hearvalidator pin numpy 1.19 and tensorflow, which cannot install on
	# Python 3.11: install them without their pins; what they really import is in pyproject.toml.
	$(PIP) install -q --no-deps heareval==2021.1.3 hearbaseline==2021.1.1
	$(PIP) install -q --no-deps --ignore-requires-python hearvalidator==2021.0.6
	$(PIP) install -q -e '.[test]'
	$(PY) -m csrc build || echo "warning: compiled kernels not built; the reference scans will be used"
	@touch $@

demo: setup
	$(VENV)/bin/hearscan demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/hearscan bench kernels
	$(VENV)/bin/hearscan bench models
	$(VENV)/bin/hearscan bench probe

clean-venv:
	rm -rf $(VENV)
