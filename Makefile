# Two entry points for a fresh machine (see README.md):
#   make run    set up, create the SQLite store, load the example registry, show sample
#               decisions, then start the enforcement servers and the web console with the
#               example config (prints the console's address and, once, a first admin login)
#   make test   set up with the test extras, run the linter and the whole test suite
# `make run` installs only what running needs; the test tools (pytest, moto, hypothesis, ruff,
# playwright) come with `make test` (separate stamp files).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/callwarden.example.yaml
CW := $(BIN)/callwarden --config $(CONFIG)
AT ?= 2026-03-02T10:00:00+08:00

.PHONY: setup setup-test run demo-decisions test lint bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

setup-test: $(BIN)/.installed-test

run: setup
	$(CW) db upgrade
	$(CW) registry import config/registry.example.yaml
	$(MAKE) --no-print-directory demo-decisions
	@echo "--- web console: http://127.0.0.1:8080/ (web: in $(CONFIG)); first admin login: ---"
	@$(CW) --actor make-run users add admin --role admin --generate --if-missing
	$(CW) serve

demo-decisions: setup
	@echo "--- sample decisions at $(AT) (callwarden check: stores nothing) ---"
	-$(CW) check --tenant acme --caller 95512 --callee 13800138000 --trunk ct-trunk-1
	-$(CW) check --tenant acme --caller 95512 --callee 13800138000 --at $(AT)
	-$(CW) check --tenant acme --caller 13812345678 --callee 13800138000 --at $(AT)
	-$(CW) check --tenant acme --caller 955121234 --callee 13900139000 --campaign spring-promo --at $(AT)
	-$(CW) check --tenant acme --caller 95512 --callee 13800138000 --at 2026-03-02T22:30:00+08:00

lint: setup-test
	$(BIN)/ruff check callwarden tests bench

test: lint
	$(BIN)/pytest -q

bench: setup-test
	$(BIN)/python bench/bench_decide.py --scale 0.1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
