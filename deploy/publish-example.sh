#!/usr/bin/env bash
# Publishes a few messages through the running compose stack, each with its own W3C
# traceparent, so that every message shows up as a trace in Jaeger (http://localhost:16686).
#
#   ./publish-example.sh [COUNT]     (default 3; run `docker compose up --build -d` first)
set -euo pipefail
cd "$(dirname "$0")"

count=${1:-3}

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

for i in $(seq 1 "$count"); do
  trace_id=$(hex 16)
  span_id=$(hex 8)
  docker compose exec -T agent amqp-agent publish --subject event \
    --header "traceparent=00-${trace_id}-${span_id}-01" \
    "{\"hello\":\"world\",\"n\":${i}}"
  echo "  trace: http://localhost:16686/trace/${trace_id}"
done
