# frontgate: `make deploy` brings the pipeline up, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv deploy stop status check reload restart-router restart-terminator restart-checker test test-full clean

# The venv is rebuilt whenever pyproject.toml (the pinned dependencies) changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

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

# Validate all three configs (nothing happens if one is invalid), then SIGHUP the stages whose
# config changed since the last deploy/reload: each re-reads it in place, no connection is dropped.
reload: $(STAMP)
	$(BIN)/frontgate reload

# Rolling restarts: one process at a time, each RUNNING and listening before the next goes, so
# with workers >= 2 the port never closes.
restart-router: $(STAMP)
	$(BIN)/frontgate restart mux-router

restart-terminator: $(STAMP)
	$(BIN)/frontgate restart tls-terminator

restart-checker: $(STAMP)
	$(BIN)/frontgate restart health-checker

check: $(STAMP)
	$(BIN)/frontgate check

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-full: $(STAMP)
	$(BIN)/python -m pytest -q
