# featpipe: set-up, demo, tests and benchmarks. `make help` lists the targets.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= out

.PHONY: help install demo test test-all bench

help:
	@echo "make install   install featpipe with its test extras (skips what is already installed)"
	@echo "make demo      extract EfficientNet-Lite0 features of the digits demo set, summarise them, compare classifiers"
	@echo "make test      install, then run the test suite (slow tests excluded)"
	@echo "make test-all  the whole suite, slow tests included"
	@echo "make bench     extraction speed and memory against the hand-written baseline"

# pip leaves satisfied requirements alone, so a second install costs seconds,
# not a new 5 GB torch. torch is pinned only where it is installed the first time.
install:
	$(PIP) install --disable-pip-version-check -q -e '.[dev]'

# A stamp, so an interrupted build is redone rather than taken as finished.
data/digits/.complete:
	rm -rf data/digits
	$(PYTHON) data/make_digits.py data/digits
	touch $@

demo: install data/digits/.complete
	mkdir -p $(OUT)
	$(PYTHON) -m featpipe extract data/digits -o $(OUT)/digits.h5 --model tf_efficientnet_lite0 --layer pooled --layer logits
	$(PYTHON) -m featpipe info $(OUT)/digits.h5
	$(PYTHON) -m featpipe fit $(OUT)/digits.h5 -o $(OUT)/digits.skops --classifier logreg,svm,knn,nb,linear --report $(OUT)/report

test: install
	$(PYTHON) -m pytest -q

test-all: install
	$(PYTHON) -m pytest -q -m ''

bench: install
	$(PYTHON) bench/extract_speed.py
