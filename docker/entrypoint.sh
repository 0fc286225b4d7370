#!/bin/sh
# `rma "$@"` in the worker image. The seed mounts stores' data at their own paths
# (`-v ./chroma-data:/chroma/chroma`, `-v ./postgres-data:/var/lib/postgresql/data`): when one
# of those is mounted, the store's folder under DATA_DIR points at it, so its data lives there.
set -eu

use_mount() {  # use_mount SEED_PATH SERVICE
    folder="$DATA_DIR/services/$2"
    mountpoint -q "$1" || return 0
    if [ -L "$folder" ] || [ ! -e "$folder" ]; then
        mkdir -p "$DATA_DIR/services"
        ln -sfn "$1" "$folder"
    else
        echo "rma-entrypoint: $1 is mounted, but $folder already holds $2's data: keeping $folder" >&2
    fi
}

use_mount /chroma/chroma chromadb
use_mount /var/lib/postgresql/data postgres
exec rma "$@"
