# msvol: `make demo` runs the pipeline on sample_data/; `make test` runs the test suite;
# `make bench` measures speed and accuracy on synthetic patients (docs/BENCHMARKS.md).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.msvol-installed

.PHONY: demo test bench sample-data train clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel on disk; anything unpinned pulls the CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/msvol run sample_data --out out/demo --force

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_bench.py --subjects 3 --out bench/work --report docs/BENCHMARKS.md

# Regenerate the committed sample patient (seed 7; not a training seed). Bytes keep it < 30 MB.
sample-data: $(STAMP)
	rm -rf sample_data/sub-01 sample_data/derivatives
	$(VENV)/bin/msvol synth sample_data --subjects 1 --visits 3 --seed 7 --intensity-scale 170 --noise 0.008 0.012

# Retrain the shipped lesion model from scratch on synthetic data (CPU; see docs/MODEL.md).
train: $(STAMP)
	$(VENV)/bin/msvol train --out build/train --cache build/cache --steps 700

clean:
	rm -rf out build bench/work
