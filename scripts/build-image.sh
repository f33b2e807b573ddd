#!/usr/bin/env bash
# The container image (`make image`): a static, stripped sidekv
# (x86_64-unknown-linux-musl, the `container` cargo profile, mimalloc) on an
# empty base. Two steps:
#
#   scripts/build-image.sh rootfs   build the binary and lay out the image's
#                                   whole filesystem in target/image/rootfs
#                                   (the Dockerfile's build stage runs this)
#   scripts/build-image.sh          rootfs, then `podman build` of
#                                   Containerfile.runtime → sidekv:latest
#
# The default guest must be built first (`make guest`): the binary embeds it.
# Needs musl-gcc (Debian's musl-tools: the bundled SQLite, zstd and mimalloc
# are C), the rustup target and, for the image, podman:
# scripts/setup-container.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
PROFILE=container
IMAGE="${SIDEKV_IMAGE:-sidekv:latest}"
CTX=target/image
GUEST=target/wasm/wasm32-wasip2/release/sidekv_guest.wasm
CA=/etc/ssl/certs/ca-certificates.crt

[ -s "$GUEST" ] || { echo "build-image: $GUEST is missing: run \`make guest\` first" >&2; exit 1; }
[ -s "$CA" ] || { echo "build-image: $CA is missing (install ca-certificates)" >&2; exit 1; }

export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
"${CARGO:-cargo}" build --profile "$PROFILE" --target "$TARGET" -p sidekv

# The image's filesystem: the binary, the CA bundle (HTTPS to S3), and an
# empty world-writable /tmp (the database and the compiled-guest cache).
rm -rf "$CTX/rootfs"
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/etc/ssl/certs" "$CTX/rootfs/tmp"
install -m 0755 "target/$TARGET/$PROFILE/sidekv" "$CTX/rootfs/usr/local/bin/sidekv"
install -m 0644 "$CA" "$CTX/rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$CTX/rootfs/tmp"
echo "build-image: $CTX/rootfs ($(du -sh "$CTX/rootfs" | cut -f1); sidekv $(stat -c %s "$CTX/rootfs/usr/local/bin/sidekv") bytes)"
[ "${1:-}" = rootfs ] && exit 0

# --format docker: OCI image configs have no HEALTHCHECK.
previous=$(scripts/podman.sh image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
scripts/podman.sh build --format docker -f Containerfile.runtime -t "$IMAGE" "$CTX"
# The image this one replaces, now untagged (unless a container still uses it).
current=$(scripts/podman.sh image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  scripts/podman.sh rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(scripts/podman.sh image inspect --format '{{.Size}}' "$IMAGE")
echo "build-image: $IMAGE in podman's local storage, $(awk "BEGIN { printf \"%.1f\", $size / 1e6 }") MB ($size bytes)"
echo "build-image: into Docker with: podman save $IMAGE | docker load"
echo "             (on this machine: scripts/podman.sh save $IMAGE | docker load)"
