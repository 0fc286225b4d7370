# The RMA pool's images, all FROM debian:bookworm-slim (Python 3.11). `make image` (docker/build.sh)
# builds every variant; the defaults below make the CPU volunteer's universal worker.
#
#   --target coordinator   `rma coordinator`
#   --target worker        `rma worker`, configured only by the seed's variables (the default target)
#
# Engines are chosen at build time: ENGINES names a folder of the engines' wheels and PACKAGES the
# Debian packages they run. docker/build.sh makes every wheel on the host with `pip wheel` (so
# nothing is fetched from PyPI in here, and the same wheels give the same image).

FROM debian:bookworm-slim AS python
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1
# tini as PID 1 passes the stop signal on to rma and reaps the orphans of stopped services; haproxy is
# the front door of every public listener (the coordinator, an edge worker's routers); nebula joins the
# mesh: it carries CAP_NET_ADMIN as a file capability, for the rma account's worker to bring its tun device
# up once the container may (--cap-add NET_ADMIN --device /dev/net/tun), and setcap is removed after.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini haproxy nebula libcap2-bin \
    && setcap cap_net_admin=+ep /usr/bin/nebula \
    && apt-get purge -y libcap2-bin && rm -rf /var/lib/apt/lists/*
# One unprivileged account owns the data volume and the seed's store paths (PostgreSQL refuses root).
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin rma \
    && install -d -o rma -g rma /data /chroma/chroma /var/lib/postgresql/data


# The virtualenv, from the host's wheels only, in its own stage so the wheels stay out of the
# images. Layers from the most to the least stable: rma's dependencies (shared by every image),
# the variant's engines, then rma itself, so a change to the source rebuilds one small layer.
FROM python AS venv
COPY build/wheels/base /wheels/base
RUN python3 -m venv /opt/rma \
    && /opt/rma/bin/pip install --no-cache-dir --no-index --no-deps /wheels/base/*.whl
ARG ENGINES=build/wheels/cpu
COPY ${ENGINES} /wheels/engines
RUN if ls /wheels/engines/*.whl >/dev/null 2>&1; then \
        /opt/rma/bin/pip install --no-cache-dir --no-index --no-deps /wheels/engines/*.whl; \
    fi
COPY build/wheels/rma /wheels/rma
RUN /opt/rma/bin/pip install --no-cache-dir --no-index --no-deps /wheels/rma/*.whl


FROM python AS coordinator
COPY --from=venv /opt/rma /opt/rma
COPY docker/healthcheck.py /usr/local/lib/rma/healthcheck.py
ENV PATH=/opt/rma/bin:$PATH COORDINATOR_HOST=0.0.0.0 COORDINATOR_PORT=8080 COORDINATOR_DATA_DIR=/data
USER rma
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM: the coordinator finishes its requests and closes its registry cleanly.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/rma/bin/python", "/usr/local/lib/rma/healthcheck.py", "coordinator"]
ENTRYPOINT ["tini", "--", "rma", "coordinator"]


FROM python AS worker
ARG PACKAGES="tesseract-ocr tesseract-ocr-eng libgomp1"
RUN if [ -n "$PACKAGES" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $PACKAGES \
        && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/*/main /etc/postgresql/*/main; \
    fi
# vLLM in a virtualenv of its own, /opt/vllm: it pins its own torch and fastapi, which rma's pins
# contradict. Only the GPU image has its wheels (elsewhere VLLM_WHEELS is empty and these steps do
# nothing). They are bind-mounted, never a layer; VLLM_KEY (their key) rebuilds these steps when
# they change, which a mount alone would not. Its 9.4 GB are three layers, the last the smallest:
# podman's commit of an N GB layer needs 3N GB more disk for a while, so one layer (or
# --layers=false) would peak near 4x the virtualenv, three peak at 25 GB (measured). The .pyc
# (0.5 GB) stay: rma cannot write them at run time, and without them vLLM imports 10 s slower.
ARG VLLM_WHEELS=build/wheels/none
ARG VLLM_KEY=
ARG VLLM_PIP="/opt/vllm/bin/pip install --no-cache-dir --no-index --no-deps"
RUN --mount=type=bind,source=${VLLM_WHEELS},target=/w set -- /w/*.whl; [ ! -e "$1" ] || python3 -m venv /opt/vllm
RUN --mount=type=bind,source=${VLLM_WHEELS},target=/w set -- /w/n*.whl; [ ! -e "$1" ] || $VLLM_PIP "$@"
RUN --mount=type=bind,source=${VLLM_WHEELS},target=/w set -- /w/t*.whl; [ ! -e "$1" ] || $VLLM_PIP "$@"
RUN --mount=type=bind,source=${VLLM_WHEELS},target=/w set -- /w/[!nt]*.whl; [ ! -e "$1" ] || $VLLM_PIP "$@"
COPY --from=venv /opt/rma /opt/rma
COPY docker/healthcheck.py /usr/local/lib/rma/healthcheck.py
COPY docker/entrypoint.sh /usr/local/bin/rma-entrypoint
# /opt/vllm/bin last: its `vllm` is found, rma's python comes first.
ENV PATH=/opt/rma/bin:$PATH:/opt/vllm/bin WORKER_TYPE=auto DATA_DIR=/data
USER rma
WORKDIR /data
VOLUME ["/data"]
# SIGTERM: the worker stops its services (TERM, then KILL after 10 s) and unregisters.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/rma/bin/python", "/usr/local/lib/rma/healthcheck.py", "worker"]
ENTRYPOINT ["tini", "--", "rma-entrypoint", "worker"]
