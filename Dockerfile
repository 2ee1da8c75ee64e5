# Switchboard's container image (docs/operations.md, "Container image").
#   docker build -t switchboard:0.1.0 .
#   docker run --rm -p 8000:8000 -e SWITCHBOARD_TOKEN_HMAC_SECRET=... -e SWITCHBOARD_API_KEY=... switchboard:0.1.0
# The build stage compiles the release binary; the runtime stage is distroless (glibc, CA
# certificates, no shell, no package manager) and runs as the unprivileged user 65532.
# Images are not built on the project's development machines (no container runtime there);
# CI checks this recipe's inputs, not an image.

# ---- build ----
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# `switchboard genconfig` prints this file, compiled into the binary.
COPY docs/switchboard.example.toml docs/switchboard.example.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchboard-server \
    && install -D -m 0755 target/release/switchboard /out/switchboard

# ---- runtime ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/switchboard /usr/local/bin/switchboard
# Every interface inside the container; the probes and the Service use this port.
ENV SWITCHBOARD_LISTEN=0.0.0.0:8000
EXPOSE 8000
USER 65532:65532
# SIGTERM drains (readiness 503, clients told to reconnect) within server.shutdown_drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
