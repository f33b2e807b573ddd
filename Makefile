# sidekv — the two commands users need: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
GUEST_WASM := target/wasm/wasm32-wasip2/release/sidekv_guest.wasm
BIN := target/release/sidekv

.PHONY: run build guest examples setup setup-wasm setup-py setup-pg setup-deno test lint bench soak clean

## run: set up what is missing, build, serve on 127.0.0.1:8000 (prints a generated secret unless KVSTORE_SECRET is set; with KVSTORE_ADMIN_ADDR, also the console's URL)
run: build
	$(BIN)

## build: release build of the guest and the host → target/release/sidekv
build: setup-wasm guest
	$(CARGO) build --release -p sidekv

guest: setup-wasm
	scripts/build-guest.sh sidekv-guest

## examples: the example guests (Rust, JS, Python, wasi:keyvalue)
examples: setup-wasm
	scripts/build-guest.sh scoped-tokens-guest chaos-guest kv-only-guest

## examples-polyglot: the JavaScript (componentize-js, npm) and Python (componentize-py, PyPI) example guests → target/wasm/examples/
.PHONY: examples-polyglot
examples-polyglot: setup-py
	examples/js-hmac/build.sh
	examples/python-allowlist/build.sh

setup: setup-wasm setup-py

setup-wasm:
	@scripts/setup-wasm.sh

# The S3 server the tests talk to (moto) and the API checker (schemathesis), from PyPI, in a private venv.
setup-py:
	@test -x $(VENV)/bin/moto_server || { python3 -m venv $(VENV) && $(VENV)/bin/pip install -q 'moto[server]>=5,<6'; }
	@test -x $(VENV)/bin/schemathesis || { test -x $(VENV)/bin/pip || python3 -m venv $(VENV); $(VENV)/bin/pip install -q 'schemathesis>=4,<5'; }

# matplotlib (PyPI) in the same venv, for the bench charts (bench/plot.py).
.PHONY: setup-plot
setup-plot:
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install -q 'matplotlib>=3.8,<4'

# PostgreSQL binaries (Debian's postgresql) for the tests' private servers and bench/pg.sh.
setup-pg:
	@scripts/setup-postgres.sh

# The real KV Connect clients for tests/kvconnect.rs and bench/kvconnect.sh: deno (.venv), node + npm, npm @deno/kv.
setup-deno:
	@scripts/setup-deno.sh

# Headless Chromium + chromedriver (Debian's packages) for the console's browser tests (tests/console.rs).
.PHONY: setup-browser
setup-browser:
	@scripts/setup-browser.sh

## lint: formatting and clippy (warnings are errors) on every crate; needs no guest built
lint:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## image: the container image sidekv:latest (a static musl sidekv on an empty base) in podman's local storage; installs podman, runc, musl-tools and the musl target when missing
.PHONY: image setup-container
image: setup-container guest
	CARGO=$(CARGO) scripts/build-image.sh

setup-container:
	@scripts/setup-container.sh

# The suites that run a second time with every server on PostgreSQL (each
# server's store at a path is a database of its own). A test about SQLite
# itself has `sqlite_only` in its name and is filtered out by name there,
# so cargo counts it as filtered, never as passed.
PG_SUITES := --test api --test e2e --test sandbox --test guests --test ops --test hostile --test pg_harness --test console --test queues

## test: lint, unit tests, then integration tests against the real binary, a real S3 server and a real PostgreSQL
test: lint setup setup-pg setup-deno setup-browser build examples examples-polyglot image
	$(CARGO) test --release --workspace --exclude sidekv-guest --exclude scoped-tokens-guest --exclude chaos-guest --exclude kv-only-guest -- --test-threads=4
	SIDEKV_TEST_BACKEND=postgres $(CARGO) test --release -p sidekv $(PG_SUITES) -- --test-threads=4 --skip sqlite_only
	$(CARGO) test --release -p sidekv-guest --lib
	scripts/schemathesis.sh

## test-api-schema: docs/openapi.yaml against the real server (schemathesis, every check)
.PHONY: test-api-schema
test-api-schema: setup-py build
	scripts/schemathesis.sh

## soak: the long robustness profile (500 crash rounds, 50 linearizability rounds)
soak: setup build
	SIDEKV_SOAK=1 $(CARGO) test --release -p sidekv --test robustness -- --nocapture

## bench: side-by-side numbers → BENCHMARKS.md, bench/*.md, their data (bench/data) and charts (bench/charts)
bench: setup setup-pg setup-deno setup-plot build
	$(CARGO) build --release -p sidekv-native-bench -p sidekv-minimal-bench
	bench/run.sh
	bench/scale.sh
	bench/pg.sh
	bench/kvconnect.sh
	bench/queues.sh
	$(VENV)/bin/python bench/plot.py

## bench-plot: the charts (bench/charts/*.svg) from the saved results (bench/data/*.jsonl)
.PHONY: bench-plot
bench-plot: setup-plot
	$(VENV)/bin/python bench/plot.py

## bench-queues: queue messages/s and enqueue → delivery latency, sidekv (pull, push) vs Redis Streams vs PostgreSQL SKIP LOCKED → bench/queues.md
.PHONY: bench-queues
bench-queues: setup-py setup-pg setup-plot build
	bench/queues.sh
	$(VENV)/bin/python bench/plot.py

## bench-scale: at-scale rows (1k, 1M, 10M keys imported through /_import; GET/POST/list/count, RSS, db size) → bench/scale.md
.PHONY: bench-scale
bench-scale: setup-plot build
	bench/scale.sh
	$(VENV)/bin/python bench/plot.py

## bench-restore: restore time from S3 (100k keys x 1 KiB), sidekv vs the seed's litestream → bench/restore.md
.PHONY: bench-restore
bench-restore: setup build
	bench/restore.sh

clean:
	$(CARGO) clean
