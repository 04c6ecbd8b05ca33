# amqp-agent container image.
#
#   docker build -t amqp-agent .
#   docker run --rm -v $PWD/amqp-agent.toml:/etc/amqp-agent/amqp-agent.toml:ro amqp-agent
#
# The baked-in config is config/amqp-agent.example.toml (RabbitMQ and FPM on 127.0.0.1, admin
# listener on loopback only): mount your own over /etc/amqp-agent/amqp-agent.toml, or override
# secrets with AMQP_AGENT_AMQP_URL, AMQP_AGENT_SIGNING_SECRET, AMQP_AGENT_ADMIN_TOKEN. As built,
# the image refuses to start: the example's placeholder signing secret fails validation
# ("fpm.signing_secrets[0] ... placeholder") until one of these replaces it.
# Traces: OTEL_EXPORTER_OTLP_ENDPOINT (+ OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME).
# deploy/docker-compose.yml runs it with RabbitMQ, PHP-FPM, an OTel collector and Jaeger.

# Base images are pinned by exact version tag (bump them on purpose). The builder and the
# runtime are both Debian 12 (bookworm), so the binary links against the same glibc.

# ---- build -------------------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources, so this layer is reused until Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
# fastcgi-client and amq-protocol-types with amqp-agent's patches (vendor/*/PATCHES.md).
COPY vendor ./vendor
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin amqp-agent \
 && rm -rf src

COPY src ./src
# COPY keeps the sources' old mtimes: touch them so Cargo rebuilds over the stub artifacts.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin amqp-agent \
 && ./target/release/amqp-agent --version

# ---- runtime -----------------------------------------------------------------------------
FROM debian:12.12-slim

# ca-certificates: amqps:// and https OTLP endpoints (rustls with the system trust store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 amqp-agent \
 && useradd --system --uid 10001 --gid amqp-agent --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin amqp-agent

COPY --from=builder /src/target/release/amqp-agent /usr/local/bin/amqp-agent
COPY config/amqp-agent.example.toml /etc/amqp-agent/amqp-agent.toml
# agent.state_dir: crash-loop protection's in-flight journal (docs/crash-loop.md). It survives a
# restart of the same container; mount a volume here to keep it across re-creations.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/amqp-agent

# Also used by `docker exec <ctr> amqp-agent status|publish|pool set|...`.
ENV AMQP_AGENT_CONFIG=/etc/amqp-agent/amqp-agent.toml

USER 10001:10001

# Admin listener: /metrics /healthz /readyz /status (open) and commands (bearer token). Reachable
# from outside the container with admin.listen = "0.0.0.0:9466" (or AMQP_AGENT_ADMIN_LISTEN),
# which requires admin.token for the commands.
EXPOSE 9466

# `amqp-agent status` exits 0 only when every subject consumes (same as GET /readyz).
# Orchestrators can also probe GET /healthz (liveness) and GET /readyz (readiness) on port 9466.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["amqp-agent", "status"]

# SIGTERM drains in-flight work for up to agent.shutdown_timeout (default 30s): give the
# container a longer stop timeout (docker stop -t 45, compose stop_grace_period: 45s,
# Kubernetes terminationGracePeriodSeconds: 45). SIGQUIT stops at once.
STOPSIGNAL SIGTERM

ENTRYPOINT ["amqp-agent"]
CMD ["run"]
