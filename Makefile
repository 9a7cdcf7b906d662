# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo_cohort
CORES ?= 2
# Test processes: the end-to-end files spend much of their time waiting on Snakemake and SLURM, so two workers
# finish sooner than one even on two cores. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

# No model hub or data set is downloaded at run time: everything comes from local files or PyPI packages.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATHMM_CACHE ?= $(CURDIR)/.cache/pathmm

.PHONY: install demo demo-full demo-cohort test test-fast lint bench bad-corpus clean-results

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(DEMO)/samplesheet.csv: $(STAMP)
	$(VENV)/bin/pathmm demo-cohort --out $(DEMO)

demo-cohort: $(DEMO)/samplesheet.csv

# The quick demo (config.yaml: every stage and method once, 3 folds) ...
demo: $(STAMP) $(DEMO)/samplesheet.csv
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES)
	@echo "Done: see results/evaluation/report.html (pathmm audit results checks every store)"

# ... and the full matrix over it (ablations, 5 folds, full downstream sizes), reusing its preprocessing
demo-full: $(STAMP) $(DEMO)/samplesheet.csv
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) --configfile workflow/config/demo_full.yaml
	@echo "Done: see results/evaluation/report.html (pathmm audit results checks every store)"

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations 15

lint: $(STAMP)
	$(VENV)/bin/ruff check pathmm_pipeline tests bench

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The bad-input corpus of the README's troubleshooting table, to try by hand (the tests build their own copy)
bad-corpus: $(STAMP)
	$(PY) -c "from pathmm_pipeline.demo.badcorpus import build_bad_corpus as b; print(len(b('tests/data/bad')), 'inputs in tests/data/bad')"

bench: $(STAMP)
	$(PY) bench/preprocess.py

clean-results:
	rm -rf results .snakemake
