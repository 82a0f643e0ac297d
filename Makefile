# frontgate: `make deploy` brings the pipeline up, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CTL    := $(BIN)/supervisorctl -c supervisord.conf

.PHONY: venv deploy stop status check test test-full clean

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

status:
	$(CTL) status

check: $(STAMP)
	$(BIN)/frontgate check

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-full: $(STAMP)
	$(BIN)/python -m pytest -q
