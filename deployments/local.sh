#!/usr/bin/env bash
# A local Prefect server (SQLite, 127.0.0.1), the kd-local process pool, every deployment of prefect.yaml,
# and one worker.   deployments/local.sh up | down | status
# Postgres instead of SQLite: export PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://user:pw@127.0.0.1:5432/prefect
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${KD_PREFECT_PORT:-4200}
RUN=${KD_LOCAL_RUN:-.kd-cache/local}   # pid files and logs of the processes `up` starts
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect-home}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_LOGGING_EXTRA_LOGGERS=kd_bundle HF_HUB_OFFLINE=1
mkdir -p "$RUN"

# Each process leads its own process group (setsid), so `down` reaches the children it starts (flow runs).
SETSID=$(command -v setsid || true)

up() {
  $SETSID "$PY" -m prefect server start --host 127.0.0.1 --port "$PORT" >"$RUN/server.log" 2>&1 &
  echo $! >"$RUN/server.pid"
  for _ in $(seq 120); do
    curl -fs "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fs "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $RUN/server.log" >&2; exit 1; }
  "$PY" -m prefect work-pool inspect kd-local >/dev/null 2>&1 || "$PY" -m prefect work-pool create kd-local --type process
  "$PY" -m prefect --no-prompt deploy --all
  $SETSID "$PY" -m prefect worker start --pool kd-local >"$RUN/worker.log" 2>&1 &
  echo $! >"$RUN/worker.pid"
  echo "UI: http://127.0.0.1:$PORT   export PREFECT_API_URL=$PREFECT_API_URL"
  echo "the weekly full grid is deployed PAUSED; turn it on with: .venv/bin/prefect --no-prompt deployment schedule resume --all"
  echo "then: .venv/bin/prefect deployment run 'rq1-knowledge-format/smoke' --param domain=food --watch   (2 min)"
  echo "  or: .venv/bin/prefect deployment run 'rq1-knowledge-format/by-domain' --param domain=food   (the full study)"
}

alive() {  # running, not a zombie awaiting its parent
  local stat
  stat=$(ps -p "$1" -o stat= 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}

# Stop one process started by `up`: TERM, then INT twice (the worker wants a second signal), then KILL, waiting
# up to KD_STOP_WAIT_S after each. The pid file goes only once the process is gone, so `down` can be rerun.
stop() {
  local name=$1 file="$RUN/$1.pid" pid sig
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if ! alive "$pid" || ! ps -p "$pid" -o args= 2>/dev/null | grep -q prefect; then
    rm -f "$file"  # gone already, or the pid now belongs to something else: nothing of ours to stop
    return 0
  fi
  for sig in TERM INT INT KILL; do
    kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq $((${KD_STOP_WAIT_S:-15} * 10))); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" || break
    echo "$name (pid $pid) still running after SIG$sig" >&2
  done
  if alive "$pid"; then
    echo "$name (pid $pid) did not stop; pid file kept: $file" >&2
    return 1
  fi
  rm -f "$file"
  echo "$name stopped (pid $pid)"
}

down() {
  local failed=0
  stop worker || failed=1
  stop server || failed=1
  return $failed
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) curl -fs "$PREFECT_API_URL/health" && echo " server up on $PREFECT_API_URL" || echo "server down" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
