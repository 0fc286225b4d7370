#!/usr/bin/env bash
# Make debian:bookworm-slim from the Debian mirror, for machines that reach no container registry:
# debootstrap's minbase (what the slim image holds), without apt's caches, imported under the
# name the Dockerfile starts FROM. MIRROR defaults to the one this machine's apt uses.
set -euo pipefail

ENGINE=${ENGINE:-podman}
if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' | awk '{print $2}' | head -1 || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "== debian:bookworm-slim from $MIRROR"
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$ENGINE" import - docker.io/library/debian:bookworm-slim
