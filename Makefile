# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv/ at the repository root first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test env vllm-env lint clean

$(STAMP): requirements/base.txt requirements/sr.txt requirements/dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt
	# basicsr's setup.py imports torch: build it against the torch installed above.
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -r requirements/sr.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The vLLM CPU server lives in its own environment (it pins torch 2.13.0): requirements/vllm.txt
# is a full lock, installed without dependency resolution.
$(VLLM_STAMP): requirements/vllm.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip wheel
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r requirements/vllm.txt
	touch $(VLLM_STAMP)

env: $(STAMP)

vllm-env: $(VLLM_STAMP)

# The default target (rule all): corpus, captions, training sets, Real-ESRGAN fine-tune,
# Conceptor LoRA, concepts and the mural made with the fine-tune.
demo: $(STAMP)
	$(VENV)/bin/snakemake --cores 2

test: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf work results logs .snakemake
