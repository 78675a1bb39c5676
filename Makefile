# featpipe: set-up, demo, tests and benchmarks. `make help` lists the targets.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: help install demo test test-all test-min lint docs bench

help:
	@echo "make install   install featpipe with its test, docs and cpu (OpenVINO) extras (skips what is already installed)"
	@echo "make demo      the guide on the digits demo set, then EfficientNet-Lite0 features of the layer it advises, classifiers compared"
	@echo "make test      install, then run the test suite (slow tests excluded)"
	@echo "make test-all  the whole suite, slow tests included"
	@echo "make test-min  the tests with the lowest version pyproject.toml declares of each dependency (but torch)"
	@echo "make lint      ruff (settings in pyproject.toml)"
	@echo "make docs      the documentation site (MkDocs, strict: a broken link fails) into site/"
	@echo "make bench     extraction, fit and guide speed against the hand-written baseline, plain scikit-learn and plain extract"

# pip leaves satisfied requirements alone, so a second install costs seconds,
# not a new 5 GB torch. torch is pinned only where it is installed the first time.
install:
	$(PIP) install --disable-pip-version-check -q -e '.[dev,docs,cpu]'

# A stamp, so an interrupted build is redone rather than taken as finished.
data/digits/.complete:
	rm -rf data/digits
	$(PYTHON) data/make_digits.py data/digits
	touch $@

# The digits pipeline (pipelines/digits.toml): the guide, then extract the layer it advises, then fit
# several classifiers on it and compare them on held-out rows. Finished stages are skipped. Nothing runs
# after it: where the guide advises fine-tuning, its `featpipe finetune` command is the last line.
demo: install data/digits/.complete
	mkdir -p out
	$(PYTHON) -m featpipe run pipelines/digits.toml

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m ''

# The lowest declared version of each dependency (.ci/lowest.py reads them from pyproject.toml), in a
# virtual environment, running the default tests: a minimum that no longer works fails here, not at a
# user's. torch and torchvision are the exception: the environment sees this machine's own (a 5 GB
# install, and pip on the development machines is capped to the cached release), so torch>=2.1 and
# torchvision>=0.16 are declared but not tested here. Slow (minutes of installs), hence not part of CI.
MIN_VENV ?= .venv-min
test-min:
	$(PYTHON) -m venv --system-site-packages $(MIN_VENV)
	$(PYTHON) .ci/lowest.py --skip torch,torchvision > $(MIN_VENV)/lowest.txt
	# With the test extras, and the test tools that must match a minimum (s3fs: see .ci/lowest-tools.txt).
	$(MIN_VENV)/bin/python -m pip install --disable-pip-version-check -q -r $(MIN_VENV)/lowest.txt \
		-r .ci/lowest-tools.txt -e '.[dev]'
	PYTHONPATH=$(CURDIR) $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: install
	$(PYTHON) -m ruff check .

# mkdocs.yml; --strict turns every warning (a link or anchor that does not resolve) into a failure.
docs: install
	$(PYTHON) -m mkdocs build --strict  # not --quiet: it hides the warnings --strict counts

# Everything the benchmarks need is in bench/ (images, baseline); images are cached in
# $TMPDIR/featpipe-bench. A short check: make bench EXTRACT_BENCH='--n 64 --rounds 1 --no-memory'
# FIT_BENCH='--n 5000 --dim 256 --classes 10 --overhead-n 2000'
EXTRACT_BENCH ?=
FIT_BENCH ?=
GUIDE_BENCH ?=
bench: install
	$(PYTHON) bench/extract_speed.py $(EXTRACT_BENCH)
	$(PYTHON) bench/fit_speed.py $(FIT_BENCH)
	$(PYTHON) bench/guide_speed.py $(GUIDE_BENCH)
