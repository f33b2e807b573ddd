# sidekv as a container: `docker build -t sidekv .` then
# `docker run -it --net host -e KVSTORE_SECRET=… sidekv`.
# Multi-stage: the build stage compiles the guest and a static (musl) sidekv
# and lays out the image's whole filesystem (scripts/build-image.sh rootfs);
# the runtime stage is that filesystem on an empty base. Offline, `make image`
# builds the same runtime stage (Containerfile.runtime) with podman.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-wasip2 x86_64-unknown-linux-musl
COPY Cargo.toml Cargo.lock Makefile ./
COPY scripts ./scripts
COPY wit ./wit
COPY core ./core
COPY kvconnect ./kvconnect
COPY host ./host
COPY guest ./guest
COPY examples ./examples
COPY tests ./tests
COPY bench ./bench
RUN make guest && scripts/build-image.sh rootfs

# The runtime stage: Containerfile.runtime line for line (tests/ops.rs checks).
FROM scratch AS runtime
COPY --from=build /src/target/image/rootfs/ /
# Container defaults: listen on every interface; the database (and the
# compiled-guest cache) live in /tmp, as in the seed; the admin endpoints
# (/healthz, /readyz, /metrics) on 9090.
ENV PATH=/usr/local/bin \
    HOST=0.0.0.0 \
    PORT=8000 \
    KVSTORE_DB=/tmp/sidekv.sqlite3 \
    KVSTORE_CACHE_DIR=/tmp/sidekv-cache \
    KVSTORE_ADMIN_ADDR=0.0.0.0:9090
# /tmp stays writable with a read-only root filesystem (`--read-only`).
VOLUME /tmp
USER 10001:10001
EXPOSE 8000 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["sidekv", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidekv"]
