#!/bin/sh
# Build a stand-in base image where no registry can be reached: Debian bookworm (minbase) with
# python3 and venv, from debootstrap, with this machine's CA bundle so pip can reach the package
# index through a TLS-intercepting proxy.  Needs root, debootstrap and a Docker engine.
#
#   docker/local-base.sh [IMAGE]        (default IMAGE: grid-payload-base:bookworm)
#   docker build --build-arg BASE_IMAGE=grid-payload-base:bookworm --build-arg TF_EXTRA=cpu \
#       --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt .
set -eu
image="${1:-grid-payload-base:bookworm}"
bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" >&2
cp "$bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# No ENV here: whatever a base sets, the final image inherits.  pip gets the bundle at build time only:
#   docker build --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt ...
tar -C "$rootfs" -c . | docker import - "$image"
