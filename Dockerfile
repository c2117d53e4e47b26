# syntax=docker/dockerfile:1
# keyplane: a production image (no embedded database; DATABASE_URL is required).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p keyplane-server --no-default-features \
 && cp target/release/keyplane /usr/local/bin/keyplane

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin keyplane
COPY --from=build /usr/local/bin/keyplane /usr/local/bin/keyplane
USER keyplane
ENV KEYPLANE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/keyplane"]
CMD ["serve"]
