# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv/ at the repository root first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test env vllm-env system-deps viewer-deps lint clean ink-model

$(STAMP): requirements/base.txt requirements/sr.txt requirements/dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt
	# basicsr's setup.py imports torch: build it against the torch installed above.
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -r requirements/sr.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The vLLM server lives in its own environment (it pins its own torch), installed without
# dependency resolution from a full lock: the CUDA build (requirements/vllm-cuda.txt) where
# `nvidia-smi` lists a GPU, the CPU build (requirements/vllm.txt) elsewhere; VLLM_BUILD=cpu
# or VLLM_BUILD=cuda chooses explicitly. A switch of build rebuilds the environment.
VLLM_BUILD ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
VLLM_LOCK_cpu := requirements/vllm.txt
VLLM_LOCK_cuda := requirements/vllm-cuda.txt
VLLM_LOCK := $(VLLM_LOCK_$(VLLM_BUILD))
ifeq ($(VLLM_LOCK),)
$(error VLLM_BUILD=$(VLLM_BUILD): use cpu or cuda)
endif
ifneq ($(wildcard $(VLLM_VENV)/.build),)
ifneq ($(shell cat $(VLLM_VENV)/.build),$(VLLM_BUILD))
$(shell rm -f $(VLLM_STAMP))
endif
endif

$(VLLM_STAMP): $(VLLM_LOCK)
	rm -rf $(VLLM_VENV)
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip wheel
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r $(VLLM_LOCK)
	echo $(VLLM_BUILD) > $(VLLM_VENV)/.build
	touch $(VLLM_STAMP)

# Debian packages for the SLURM test cluster and the browser test of the viewer. Installed
# as root where apt-get exists; elsewhere the tests that need them skip and say why.
SYSTEM_PACKAGES := slurmctld slurmd slurm-client munge chromium
SYSTEM_COMMANDS := slurmctld slurmd sbatch munged chromium

system-deps:
	@missing=""; for cmd in $(SYSTEM_COMMANDS); do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "system-deps: installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
		echo "system-deps: missing$$missing and not root with apt-get: the SLURM and browser tests will skip"; \
	fi

# OpenSeadragon for the mural viewers, from the npm registry at the version package-lock.json pins.
VIEWER_STAMP := viewer/node_modules/openseadragon/package.json

$(VIEWER_STAMP): viewer/package.json viewer/package-lock.json
	@if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; fi
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
	touch $(VIEWER_STAMP)

viewer-deps: $(VIEWER_STAMP)

env: $(STAMP) $(VIEWER_STAMP)

vllm-env: $(VLLM_STAMP)

# The default target (rule all): corpus, captions, training sets, Real-ESRGAN fine-tune,
# Conceptor LoRA, concepts and the mural made with the fine-tune.
demo: $(STAMP) $(VIEWER_STAMP)
	$(VENV)/bin/snakemake --cores 2

# The suite in parallel on the machine's cores (pytest-xdist); tests that share a fixture
# run on one worker: those that wait on SLURM and vLLM first, beside the demo build that
# starts in the background, its readers last (tests/conftest.py). TEST_WORKERS=0: serially.
TEST_WORKERS ?= auto

test: $(STAMP) $(VLLM_STAMP) $(VIEWER_STAMP) system-deps
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# Rebuild the learned ink model that ships in resources/flux/ink (the demo's Flux): ~40 min
# on 2 CPU cores, fixed seeds (resources/flux/ink-training.yaml); it replaces the folder.
ink-model: $(STAMP)
	$(PY) -m blkassist.demo.ink_model

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf work results logs .snakemake report.zip
