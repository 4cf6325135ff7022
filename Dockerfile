# syntax=docker/dockerfile:1
# Build: the full Rust toolchain; run: a distroless image with only glibc and the binary.
#
# The image has no clinic: `lifeline serve` refuses to start until it gets a configuration,
# either a mounted file (LIFELINE_CONFIG=/etc/lifeline/lifeline.toml) or the whole TOML in
# LIFELINE_CONFIG_TOML. To try it: -e LIFELINE_CONFIG=/etc/lifeline/demo.toml (demo mode).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them: every target Cargo.toml declares
# gets an empty stand-in, whatever binaries there are.
COPY Cargo.toml Cargo.lock ./
COPY scripts/docker-stub-targets.sh /usr/local/bin/docker-stub-targets
RUN docker-stub-targets Cargo.toml && cargo build --release --locked --bin lifeline && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY fixtures ./fixtures
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin lifeline

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lifeline /usr/local/bin/lifeline
COPY fixtures/demo.toml /etc/lifeline/demo.toml
# SQLite (the default) needs a writable directory; mount a volume here to keep the data (a
# volume mounted as root needs the container run as root, e.g. RAILWAY_RUN_UID=0 on Railway).
WORKDIR /home/nonroot
ENV PORT=8080 \
    DATABASE_URL=sqlite:///home/nonroot/lifeline.db?mode=rwc \
    LOG_FORMAT=json \
    RUST_LOG=info
USER nonroot:nonroot
EXPOSE 8080
# Checks the web server; run `lifeline worker` containers with --no-healthcheck.
HEALTHCHECK --interval=10s --timeout=4s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/lifeline", "healthcheck"]
CMD ["/usr/local/bin/lifeline", "serve"]
