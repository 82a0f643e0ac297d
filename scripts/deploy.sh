#!/usr/bin/env bash
# Bring the pipeline up under supervisord, or apply what changed to the running one.
#
#   scripts/deploy.sh         (run by `make deploy`, after the configs passed `frontgate check`)
#     supervisord not running: start it; it starts every program.
#     supervisord running:     reread + update supervisord.conf, then restart only the stages whose
#                              config changed since the last deploy (sha256 in run/deployed/), and
#                              start any stage that is not running.
#     Then wait until every program is RUNNING and print `supervisorctl status`.
#   scripts/deploy.sh stop    (run by `make stop`) shut supervisord and everything under it down.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
CONF=supervisord.conf
STAGES=(tls-terminator mux-router health-checker)
PROGRAMS=("${STAGES[@]}" demo:coltrane demo:maps)
DEPLOYED=run/deployed
WAIT_SECONDS=${DEPLOY_WAIT_SECONDS:-30}

ctl() { "$BIN/supervisorctl" -c "$CONF" "$@"; }
supervisord_running() { ctl pid >/dev/null 2>&1; }

# The files that make up a stage's config. The checker also depends on the router's file: that is
# where its server list (and the state file path) comes from.
config_files() {
  case "$1" in
    health-checker) echo configs/health-checker.toml configs/mux-router.toml ;;
    *) echo "configs/$1.toml" ;;
  esac
}

fingerprint() {
  # shellcheck disable=SC2046  # word splitting of the file list is intended
  cat $(config_files "$1") | sha256sum | cut -d' ' -f1
}

record() { fingerprint "$1" >"$DEPLOYED/$1.sha256"; }

# RUNNING, STARTING, BACKOFF, FATAL, STOPPED, ... (`status` exits non-zero for all but RUNNING)
program_state() { { ctl status "$1" 2>/dev/null || true; } | awk -v p="$1" '$1 == p { print $2 }'; }

log_tail() {
  local log="logs/${1#demo:}.log"
  [[ -f $log ]] && { echo "--- last lines of $log:"; tail -n 20 "$log"; } >&2 || true
}

wait_until_running() {
  local deadline=$((SECONDS + WAIT_SECONDS)) program state status pending
  while :; do
    status=$(ctl status 2>/dev/null || true)       # one call per round: each one starts a Python
    pending=()
    for program in "${PROGRAMS[@]}"; do
      state=$(awk -v p="$program" '$1 == p { print $2 }' <<<"$status")
      case "$state" in
        RUNNING) ;;
        FATAL)
          echo "error: $program could not be started (FATAL)" >&2
          log_tail "$program"
          exit 1 ;;
        *) pending+=("$program:${state:-UNKNOWN}") ;;
      esac
    done
    ((${#pending[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      echo "error: not RUNNING after ${WAIT_SECONDS}s: ${pending[*]}" >&2
      for program in "${pending[@]}"; do log_tail "${program%:*}"; done
      exit 1
    fi
    sleep 0.3
  done
}

deploy() {
  mkdir -p logs run state "$DEPLOYED"
  if ! supervisord_running; then
    "$BIN/supervisord" -c "$CONF"
    for stage in "${STAGES[@]}"; do
      record "$stage"
      echo "$stage: started"
    done
  else
    ctl reread
    ctl update
    for stage in "${STAGES[@]}"; do
      if [[ "$(fingerprint "$stage")" != "$(cat "$DEPLOYED/$stage.sha256" 2>/dev/null || true)" ]]; then
        if ! ctl restart "$stage" >/dev/null; then
          echo "error: $stage: config changed, restart failed" >&2
          log_tail "$stage"
          exit 1
        fi
        echo "$stage: config changed, restarted"
      elif [[ "$(program_state "$stage")" != RUNNING ]]; then
        ctl start "$stage" >/dev/null || true     # wait_until_running reports a failure
        echo "$stage: unchanged, was not running, started"
      else
        echo "$stage: unchanged"
      fi
      record "$stage"
    done
  fi
  wait_until_running
  ctl status
}

stop() {
  if ! supervisord_running; then
    echo "supervisord is not running"
    return 0
  fi
  local pid deadline=$((SECONDS + 60))
  pid=$(ctl pid)
  ctl shutdown
  # shutdown returns once supervisord has the request; wait until it (and so every program) is gone.
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "error: supervisord (pid $pid) still running after 60s" >&2
      exit 1
    fi
    sleep 0.2
  done
}

case "${1:-deploy}" in
  deploy) deploy ;;
  stop) stop ;;
  *) echo "usage: $0 [deploy|stop]" >&2; exit 64 ;;
esac
