# syntax=docker/dockerfile:1
#
# One image, three programs: inlet-gateway (the default command),
# inlet-worker and the `inlet` operator CLI.
#
#   docker build -t inlet .
#   docker run --rm -p 8080:8080 --env-file .env inlet                 # gateway
#   docker run --rm --env-file .env inlet inlet-worker                 # worker
#   docker run --rm --env-file .env inlet inlet sign payload.json      # CLI
#
# Needs BuildKit (the default builder of current Docker): the build caches
# the cargo registry and the target directory between builds, so a change to
# one crate recompiles that crate, not the dependency tree.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Only what the build reads: never target/, data/ or .env.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# Migrations are compiled into the binaries (include_str!).
COPY migrations ./migrations
COPY config ./config
# The workspace root package `inlet-suite` (the test harness) must be
# loadable for cargo to read the workspace; it is not built.
COPY tests/support ./tests/support

RUN --mount=type=cache,id=inlet-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=inlet-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=inlet-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p inlet-gateway -p inlet-worker -p inlet-cli \
 && mkdir -p /out \
 && cp target/release/inlet-gateway target/release/inlet-worker target/release/inlet /out/

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# ca-certificates for outgoing TLS; curl for the compose healthcheck
# (`curl -fsS http://127.0.0.1:8080/readyz`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 inlet \
 && useradd --system --uid 10001 --gid inlet --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin inlet \
 && mkdir -p /data /app/config \
 && chown inlet:inlet /data

COPY --from=builder /out/ /usr/local/bin/
# Settings are found as config/default.toml from the working directory
# upwards; everything else comes from INLET_* variables.
COPY config/default.toml /app/config/default.toml

WORKDIR /app
ENV INLET_LISTEN=0.0.0.0:8080 \
    INLET_DATA_DIR=/data \
    INLET_LOG_FORMAT=json

# Audit logs (/data/audit), cache files (/data/cache), SQLite file if no
# Postgres is configured.
VOLUME ["/data"]
EXPOSE 8080
USER inlet:inlet

# No ENTRYPOINT: the command picks the program. The gateway and the worker
# stop gracefully on SIGTERM (docker stop).
CMD ["inlet-gateway"]
