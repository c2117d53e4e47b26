# syntax=docker/dockerfile:1
# keyplane and keyplane-gate: a production image (no embedded database, so
# DATABASE_URL is required). The entrypoint is keyplane; run the gate with
# `--entrypoint /usr/local/bin/keyplane-gate` (docker-compose.yml does).
# There is no HEALTHCHECK here: both serve HTTPS with a certificate from a CA
# the image cannot know, so the deployment checks them with its CA file, e.g.
#   curl -fsS --cacert /certs/ca.pem https://localhost:8080/readyz
#   curl -fsS --cacert /certs/ca.pem https://localhost:8090/_keyplane/healthz

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# --no-default-features leaves out keyplane-server's `embedded` feature (the
# gate has no features).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p keyplane-server -p keyplane-gate -p keyplanectl --no-default-features \
 && cp target/release/keyplane target/release/keyplane-gate target/release/keyplanectl /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keyplane \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin keyplane
COPY --from=build /usr/local/bin/keyplane /usr/local/bin/keyplane-gate /usr/local/bin/keyplanectl /usr/local/bin/
USER 10001:10001
ENV KEYPLANE_LISTEN=0.0.0.0:8080 \
    KEYPLANE_GATE_LISTEN=0.0.0.0:8090
EXPOSE 8080 8090
ENTRYPOINT ["/usr/local/bin/keyplane"]
CMD ["serve"]
