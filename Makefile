# frontgate: `make deploy` brings the pipeline up, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv deploy stop status check certs reload restart-router restart-terminator restart-checker \
        test test-full test-tools bench bench-tools chromium pebble redis-tools stats-screenshot

# The venv is rebuilt whenever pyproject.toml (the pinned dependencies) changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# sslyze (the TLS scanner the suite runs against a live terminator) pins a cryptography older than
# ours, so it lives in a venv of its own; only the test calls it.
SSLYZE := .venv-sslyze/.installed
$(SSLYZE):
	$(PYTHON) -m venv .venv-sslyze
	.venv-sslyze/bin/pip install --quiet sslyze==6.3.1
	touch $@

# The benchmark's Debian tools (command:package), installed only when one is missing. The suite's
# smoke test of the benchmark harness needs them too; the HTTP/2 tests need nghttp and h2load.
BENCH_TOOLS := haproxy:haproxy stunnel:stunnel4 nginx:nginx wrk:wrk ab:apache2-utils h2load:nghttp2-client nghttp:nghttp2-client
bench-tools:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for t in $(BENCH_TOOLS); do \
	  command -v "$${t%%:*}" >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Headless Chromium (Debian's `chromium`), installed only when missing: `make test` loads the
# stats page in it, and `make stats-screenshot` uses it.
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# Pebble (Let's Encrypt's test ACME server, Debian's `pebble`, with pebble-challtestsrv), installed
# only when missing: the cert-manager tests issue and renew certificates against it on 127.0.0.1.
pebble:
	@command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || { \
	  echo "installing pebble"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pebble; }

# The slow suite's extra tools: headless Chromium (browser test), testssl.sh (TLS scan), atheris (fuzzing).
test-tools: $(STAMP)
	@command -v chromium >/dev/null && command -v testssl >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium testssl.sh; }
	$(BIN)/pip install --quiet atheris==2.3.0

# Check before touching anything: a config that fails `frontgate check` never reaches supervisord,
# and the running pipeline keeps serving. scripts/deploy.sh restarts only what changed.
deploy: $(STAMP)
	mkdir -p logs run state certs
	$(BIN)/python scripts/make_dev_cert.py configs/tls-terminator.toml
	$(BIN)/frontgate check
	scripts/deploy.sh

stop:
	scripts/deploy.sh stop

# Processes (pid, uptime, RSS, CPU, fds, connections), server health, certificate expiry.
status:
	$(BIN)/frontgate status

# A PNG of the running router's stats page ([admin] in configs/mux-router.toml) in logs/stats.png;
# another path: make stats-screenshot PNG=/tmp/stats.png. Fails, saying so, when nothing runs.
PNG ?= logs/stats.png
stats-screenshot: $(STAMP) chromium
	$(BIN)/python scripts/stats_screenshot.py $(PNG)

# Validate all three configs (nothing happens if one is invalid), then SIGHUP the stages whose
# config changed since the last deploy/reload: each re-reads it in place, no connection is dropped.
reload: $(STAMP)
	$(BIN)/frontgate reload

# Rolling restarts: one process at a time, each RUNNING and serving before the next goes, so with
# workers >= 2 the TCP ports never close. The router's unix socket (run/router.sock) never closes
# at all: supervisord holds it, and connections wait in its backlog while a worker restarts.
restart-router: $(STAMP)
	$(BIN)/frontgate restart mux-router

restart-terminator: $(STAMP)
	$(BIN)/frontgate restart tls-terminator

restart-checker: $(STAMP)
	$(BIN)/frontgate restart health-checker

check: $(STAMP)
	$(BIN)/frontgate check

certs: $(STAMP)
	$(BIN)/frontgate certs

# The route store tests start their own redis-server and redis-sentinel (Debian packages),
# installed only when missing.
redis-tools:
	@command -v redis-server >/dev/null 2>&1 && command -v redis-sentinel >/dev/null 2>&1 || { \
	  echo "installing redis-server redis-sentinel"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-sentinel; }

test: $(STAMP) $(SSLYZE) bench-tools chromium pebble redis-tools
	$(BIN)/python -m pytest -q -m "not slow"

test-full: $(STAMP) $(SSLYZE) bench-tools pebble test-tools redis-tools
	$(BIN)/python -m pytest -q

# Side by side with stunnel + HAProxy on this machine: make bench BENCH_ARGS="--rounds 1 --scenarios 1,4"
bench: $(STAMP) bench-tools
	scripts/bench/run $(BENCH_ARGS)
