# syntax=docker/dockerfile:1
# Build: the full Rust toolchain; run: a distroless image with only glibc and the binary.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/bin/loadgen.rs \
    && touch src/lib.rs && cargo build --release --locked --bin lifeline && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY fixtures ./fixtures
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin lifeline

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/lifeline /usr/local/bin/lifeline
COPY fixtures/demo.toml /etc/lifeline/demo.toml
# SQLite (the default) needs a writable directory; mount a volume here to keep the data.
WORKDIR /home/nonroot
ENV PORT=8080 \
    DATABASE_URL=sqlite:///home/nonroot/lifeline.db?mode=rwc \
    LOG_FORMAT=json \
    RUST_LOG=info
USER nonroot:nonroot
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/lifeline", "healthcheck"]
CMD ["/usr/local/bin/lifeline", "serve"]
