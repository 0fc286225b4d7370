# Set-up and everyday commands. Every target installs what it needs on a fresh Debian machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What the pool runs (redis-server, postgresql, tesseract), and the browser the dashboard's tests drive.
DEBIAN_PACKAGES := redis-server postgresql tesseract-ocr tesseract-ocr-eng chromium chromium-driver
# Only the benchmarks compare against these.
BENCH_DEBIAN_PACKAGES := wrk nginx haproxy
PACKAGES ?= $(DEBIAN_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up test lint typecheck bench system-packages clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,storage,tier1]'
	touch $(STAMP)

system-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

up: $(STAMP) system-packages
	$(VENV)/bin/rma up

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-packages lint typecheck
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(MAKE) system-packages PACKAGES="$(DEBIAN_PACKAGES) $(BENCH_DEBIAN_PACKAGES)"
	$(PY) bench/coordinator_scale.py
	$(PY) bench/failover.py
	$(PY) bench/proxy_overhead.py
	$(PY) bench/tier1.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
