# sidekv as a container: `docker build -t sidekv .` then
# `docker run -it --net host -e KVSTORE_SECRET=… sidekv`.
# Multi-stage: build the guest and the host with the same Makefile targets
# the README uses, then copy the one binary into a small non-root image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY Cargo.toml Cargo.lock Makefile ./
COPY scripts ./scripts
COPY wit ./wit
COPY host ./host
COPY guest ./guest
COPY examples ./examples
COPY tests ./tests
COPY bench ./bench
RUN make build

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin sidekv
COPY --from=build /src/target/release/sidekv /usr/local/bin/sidekv
USER 10001
# Container defaults: listen on every interface; the database (and the
# compiled-guest cache) live in /tmp, as in the seed; the admin endpoints
# (/healthz, /readyz, /metrics) on 9090.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    KVSTORE_DB=/tmp/sidekv.sqlite3 \
    KVSTORE_CACHE_DIR=/tmp/sidekv-cache \
    KVSTORE_ADMIN_ADDR=0.0.0.0:9090
EXPOSE 8000 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["sidekv", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidekv"]
