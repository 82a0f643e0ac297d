#!/usr/bin/env bash
# Bring the pipeline up under supervisord, or apply what changed to the running one.
#
#   scripts/deploy.sh         (run by `make deploy`, after the configs passed `frontgate check`)
#     Writes supervisord.conf from supervisord.conf.in (`frontgate supervisord-conf`: the number of
#     processes per stage comes from `workers` in its TOML).
#     supervisord not running: start it; it starts every program.
#     supervisord running:     reread + update supervisord.conf, then restart only the stages whose
#                              config changed since the last deploy (`frontgate deployed`: sha256 in
#                              run/deployed/), one process at a time (`frontgate restart`), and
#                              start any stage that is not running.
#     Then wait until every program is RUNNING and print `supervisorctl status`; then wait (at most
#     15 s) until the health checker has checked every server (`frontgate health --wait`), print
#     each app's state, and fail if an app has no server up.
#   scripts/deploy.sh stop    (run by `make stop`) shut supervisord and everything under it down.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
CONF=supervisord.conf
STAGES=(tls-terminator mux-router health-checker cert-manager)
PROGRAMS=("${STAGES[@]}" demo:coltrane demo:maps)
DEPLOYED=run/deployed
WAIT_SECONDS=${DEPLOY_WAIT_SECONDS:-30}
HEALTH_WAIT_SECONDS=${DEPLOY_HEALTH_WAIT_SECONDS:-15}

ctl() { "$BIN/supervisorctl" -c "$CONF" "$@"; }
supervisord_running() { ctl pid >/dev/null 2>&1; }

# Which files make up a stage's config, and their fingerprints, live in one place: frontgate_ops/deploy.py.
fg() { "$BIN/frontgate" "$@"; }

# A program's processes in `supervisorctl status`: "mux-router", or "mux-router:mux-router_00", ...
# when it has several workers. Prints one state per process.
states_of() { awk -v p="$1" '$1 == p || index($1, p ":") == 1 { print $2 }'; }

# RUNNING when every process of the program is (`status` exits non-zero for all but RUNNING)
program_state() {
  { ctl status 2>/dev/null || true; } | states_of "$1" | sort -u | awk '{ s = s ? s "," $0 : $0 } END { print s }'
}

log_tail() {     # logs/NAME.log, or logs/NAME_00.log, ... for a stage with several workers
  local name=${1#demo:} log
  for log in "logs/$name.log" "logs/$name"_[0-9]*.log; do
    [[ -f $log ]] && { echo "--- last lines of $log:"; tail -n 20 "$log"; } >&2
  done
  return 0
}

wait_until_running() {
  local deadline=$((SECONDS + WAIT_SECONDS)) program state status pending
  while :; do
    status=$(ctl status 2>/dev/null || true)       # one call per round: each one starts a Python
    pending=()
    for program in "${PROGRAMS[@]}"; do
      state=$(states_of "$program" <<<"$status" | sort -u | awk '{ s = s ? s "," $0 : $0 } END { print s }')
      case "$state" in
        RUNNING) ;;
        *FATAL*)
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
  fg supervisord-conf
  if ! supervisord_running; then
    "$BIN/supervisord" -c "$CONF"
    fg deployed record "${STAGES[@]}"
    for stage in "${STAGES[@]}"; do
      echo "$stage: started"
    done
  else
    ctl reread
    ctl update
    local changed
    changed=" $(fg deployed changed | tr '\n' ' ') "
    for stage in "${STAGES[@]}"; do
      if [[ $changed == *" $stage "* ]]; then
        # One process at a time: with workers >= 2 the stage's TCP ports never close (the
        # router's unix socket never does: supervisord holds it).
        if ! fg restart "$stage" >/dev/null; then
          echo "error: $stage: config changed, restart failed" >&2
          log_tail "$stage"
          exit 1
        fi
        echo "$stage: config changed, restarted"
      elif [[ "$(program_state "$stage")" != RUNNING ]]; then
        ctl start "$stage:*" >/dev/null || true     # wait_until_running reports a failure
        echo "$stage: unchanged, was not running, started"
      else
        echo "$stage: unchanged"
      fi
      fg deployed record "$stage"
    done
  fi
  wait_until_running
  ctl status
  # Return when the first request would be answered: every server checked by the running checker,
  # its state agreeing with its last check; each app's state; non-zero if an app has no server up.
  if ! fg health --wait "$HEALTH_WAIT_SECONDS"; then
    log_tail health-checker
    exit 1
  fi
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
