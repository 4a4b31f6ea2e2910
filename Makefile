# Two commands on a fresh machine (each installs what it needs first):
#   make serve   serve values/dev-cpu.yaml locally on the CPU (CONFIG=path to serve another file)
#   make test    run the whole test suite
# Also: make bench (benchmarks that print ratios), make lock (re-freeze dependencies).

VENV  := .venv
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: serve test bench lock setup

$(STAMP): requirements-dev.lock image/pyproject.toml ci/setup.sh ci/install-tools.sh
	ci/setup.sh
	touch $@

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/llm-serving serve $(CONFIG)

test: $(STAMP)
	ci/test.sh

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/serving_overhead.py

lock:
	ci/lock.sh
