#!/usr/bin/env bash
# podman with the settings that work on locked-down machines (VMs and CI
# sandboxes without systemd, overlay mounts or permission to set rlimits):
# vfs storage, runc (crun refuses a hybrid cgroup setup), cgroupfs, and
# scripts/containers.conf (no default ulimits). `make image` and
# tests/container.rs run podman through it; elsewhere plain `podman` works too
# (then build and run with the same storage driver).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${SIDEKV_CONTAINERS_CONF:-$here/containers.conf}"
exec podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"
