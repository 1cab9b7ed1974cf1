# One command each, on a fresh machine: every target creates .venv and fetches data when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STAMP_EXPERIMENTS := $(VENV)/.installed-experiments
DATA_TEST := minilm sentiment stsb wikitext2 smollm2 reviews wnut16 faqbot

.PHONY: test test-slow test-without-extras experiment bench data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The experiments extra (matplotlib, for the plots), on top of the test install; `make test` does not need it.
$(STAMP_EXPERIMENTS): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,experiments]'
	touch $(STAMP_EXPERIMENTS)

data: $(STAMP)
	$(PY) -m minitransformers fetch $(DATA_TEST)

test: $(STAMP)
	$(PY) -m minitransformers fetch $(DATA_TEST)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m minitransformers fetch $(DATA_TEST)
	$(PY) -m pytest -q -m slow

# The suite as on a machine without the test extra: only the parity tests may skip (tests/conftest.py hides them).
test-without-extras: $(STAMP)
	$(PY) -m minitransformers fetch $(DATA_TEST)
	MINITRANSFORMERS_HIDE=transformers,peft,bitsandbytes,triton,gguf $(PY) -m pytest -q -rs

experiment: $(STAMP_EXPERIMENTS)
	$(PY) -m minitransformers fetch $(DATA_TEST)
	$(PY) experiments/run.py

bench: $(STAMP)
	$(PY) experiments/train_bench.py
	$(PY) experiments/quant_bench.py
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then $(PY) experiments/kernels_bench.py && $(PY) experiments/decode_bench.py; else echo "kernels_bench.py, decode_bench.py: no CUDA device, skipped"; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
