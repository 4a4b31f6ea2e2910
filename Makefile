# Two commands on a fresh machine (each installs what it needs first):
#   make serve   serve values/dev-cpu.yaml locally on the CPU (CONFIG=path to serve another file)
#   make test    run the whole test suite
# Also: make batch INPUT=requests.jsonl OUTPUT=results/ (an offline batch job on the CPU, values/batch-offline-cpu.yaml),
# Also: make lint (ruff and mypy on image/src), make bench (the serving benchmark: ratios with intervals),
#   make cluster-fit (the EKS fit simulation's tables),
#   make faults (the whole fault battery on the real app; prints its table),
#   make lock (re-freeze dependencies),
#   make image (build the CPU image with buildah) and make image-test (build it, serve from it, test it).

VENV  := .venv
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: serve batch test lint bench cluster-fit faults lock setup image image-test

# The CPU image, built locally (no Docker daemon or Docker Hub needed): see ci/build-image.sh.
IMAGE ?= localhost/llm-serving:$(shell sed -n 's/^version = "\(.*\)"$$/\1/p' image/pyproject.toml)-cpu

$(STAMP): requirements-dev.lock image/pyproject.toml ci/setup.sh ci/install-tools.sh
	ci/setup.sh
	touch $@

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/llm-serving serve $(CONFIG)

# An offline batch job with the CPU batch profile (BATCH_CONFIG= another), reading INPUT and writing OUTPUT.
BATCH_CONFIG ?= values/batch-offline-cpu.yaml
batch: $(STAMP)
	$(VENV)/bin/llm-serving batch $(BATCH_CONFIG) $(if $(INPUT),--input $(INPUT)) $(if $(OUTPUT),--output $(OUTPUT))

test: $(STAMP)
	ci/test.sh

# Lint (pycodestyle, pyflakes, import order, bugbear, pyupgrade), formatting and types of the app,
# configured in image/pyproject.toml; a few seconds. All three run, so one pass shows every finding.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check image/src || status=1; \
	$(VENV)/bin/ruff format --check image/src || status=1; \
	$(VENV)/bin/mypy --config-file image/pyproject.toml image/src/llm_serving || status=1; \
	exit $$status

# The EKS fit simulation's tables (tests/cluster_fit asserts them in make test): Karpenter's
# instance types per worker group, Ray's placement of each model, the Flux releases' agreements.
cluster-fit: $(STAMP)
	@export PATH="$(CURDIR)/.tools/bin:$$PATH"; \
	$(VENV)/bin/python -m tests.cluster_fit.karpenter && \
	$(VENV)/bin/python -m tests.cluster_fit.placement && \
	$(VENV)/bin/python -m tests.cluster_fit.composition

# The fault battery (issue 14): engines, gateways and the GCS killed under load, disconnects,
# overload, the limits store down, slow clients; prints one row per fault. Its quicker cases also
# run in make test (tests/e2e/test_faults_*.py).
faults: $(STAMP)
	@export PATH="$(CURDIR)/.tools/bin:$$PATH"; $(VENV)/bin/python -m tests.faults

# benchmarks/serving_overhead.py: C, B, A1, A2, A3 and A1 again in interleaved rounds, ratios with
# 95% intervals (~25 min on an idle 2-core machine); BENCH_ARGS="--rounds 5 --servers A1,A2" and so on.
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/serving_overhead.py $(BENCH_ARGS)

lock:
	ci/lock.sh

image:
	IMAGE=$(IMAGE) ci/build-image.sh

# Builds the image (cached layers are reused), runs it as a container and drives it with the
# openai client (tests/image); prints the build time, image size and the container's time to ready.
image-test: $(STAMP)
	@started=$$(date +%s); \
	IMAGE=$(IMAGE) ci/build-image.sh && \
	LLM_SERVING_IMAGE=$(IMAGE) ci/test.sh tests/image -s; \
	status=$$?; echo "image-test: $$(($$(date +%s) - started)) s in all"; exit $$status
