#!/usr/bin/env bash
# A local Prefect server (SQLite, 127.0.0.1), the kd-local process pool, every deployment of prefect.yaml,
# and one worker.   deployments/local.sh up | down | status
# Postgres instead of SQLite: export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pw@127.0.0.1:5432/prefect
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${KD_PREFECT_PORT:-4200}
RUN=.kd-cache/local
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect-home}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=kd_bundle HF_HUB_OFFLINE=1
mkdir -p "$RUN"

up() {
  "$PY" -m prefect server start --host 127.0.0.1 --port "$PORT" >"$RUN/server.log" 2>&1 &
  echo $! >"$RUN/server.pid"
  for _ in $(seq 120); do
    curl -fs "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fs "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $RUN/server.log" >&2; exit 1; }
  "$PY" -m prefect work-pool inspect kd-local >/dev/null 2>&1 || "$PY" -m prefect work-pool create kd-local --type process
  "$PY" -m prefect --no-prompt deploy --all
  "$PY" -m prefect worker start --pool kd-local >"$RUN/worker.log" 2>&1 &
  echo $! >"$RUN/worker.pid"
  echo "UI: http://127.0.0.1:$PORT   export PREFECT_API_URL=$PREFECT_API_URL"
  echo "then: .venv/bin/prefect deployment run 'rq1-knowledge-format/smoke' --param domain=food --watch   (2 min)"
  echo "  or: .venv/bin/prefect deployment run 'rq1-knowledge-format/by-domain' --param domain=food   (the full study)"
}

down() {
  for name in worker server; do
    if [ -f "$RUN/$name.pid" ]; then
      kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
      rm -f "$RUN/$name.pid"
    fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) curl -fs "$PREFECT_API_URL/health" && echo " server up on $PREFECT_API_URL" || echo "server down" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
