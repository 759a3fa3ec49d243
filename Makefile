# msvol: `make demo` runs the pipeline on sample_data/; `make test` runs the test suite;
# `make bench` measures speed and accuracy on synthetic patients (docs/BENCHMARKS.md).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.msvol-installed

.PHONY: demo test bench bench-heldout sample-data train clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel on disk; anything unpinned pulls the CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# --settle-minutes 0: a fresh clone's sample_data was written seconds ago (msvol would wait for it to settle)
demo: $(STAMP)
	$(VENV)/bin/msvol run sample_data --out out/demo --force --settle-minutes 0

test: $(STAMP)
	@# the review page's browser test needs Debian's chromium (it skips, saying so, without it)
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get install -y -q chromium >/dev/null 2>&1; } || echo "no chromium: the browser test will be skipped"
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/dicom_ingest.py --out bench/work/dicom --report docs/BENCHMARKS.md
	$(PY) bench/review_store.py --out bench/work/review --report docs/BENCHMARKS.md
	$(PY) bench/cohort.py --reports 1000 --out bench/work/cohort --report docs/BENCHMARKS.md
	$(PY) bench/run_bench.py --subjects 3 --out bench/work --report docs/BENCHMARKS.md
	$(PY) bench/throughput.py --patients 4 --dry-patients 100 --out bench/work/throughput --report docs/BENCHMARKS.md

# Regenerate the committed sample patient (seed 7; not a training seed). Bytes keep it < 30 MB.
sample-data: $(STAMP)
	rm -rf sample_data/sub-01 sample_data/derivatives
	$(VENV)/bin/msvol synth sample_data --subjects 1 --visits 3 --seed 7 --intensity-scale 170 --noise 0.008 0.012

# The lesion models on 2 x 8 held-out synthetic patients (in and outside the training contrasts), then on
# the independent check set (msvol.synth.checkset); the issue-12 figures of all sets go into docs/BENCHMARKS.md.
bench-heldout: $(STAMP)
	$(PY) bench/heldout.py --contrast standard --subjects 8
	$(PY) bench/heldout.py --contrast shifted --subjects 8
	$(PY) bench/checkset.py --report docs/BENCHMARKS.md

# Retrain both shipped lesion models from scratch (CPU, the two in parallel; docs/MODEL.md): the 2.0 recipes
# (msvol/training/recipes), then the 3.0 fine-tuning from them (the shipped bundles' own configs).
# Copy build/train-per-visit/bundle and build/train-change/bundle over msvol/models/lesion_* to ship the result.
RENDER = from pathlib import Path; from msvol.training import train; train.render_label_cases(range($(1), 1012, 2), Path("build/labelcache"))
TRAIN = OMP_NUM_THREADS=1 $(VENV)/bin/msvol train --cache build/labelcache
train: $(STAMP)
	$(PY) -c '$(call RENDER,1000)' & $(PY) -c '$(call RENDER,1001)'; wait
	$(TRAIN) --config msvol/training/recipes/per-visit-2.0.yaml --out build/train-per-visit-2.0 & \
	$(TRAIN) --config msvol/training/recipes/change-2.0.yaml --out build/train-change-2.0; wait
	$(TRAIN) --config msvol/models/lesion_segmenter/configs/train.yaml --out build/train-per-visit & \
	$(TRAIN) --config msvol/models/lesion_change/configs/train.yaml --out build/train-change; wait

clean:
	rm -rf out build bench/work
