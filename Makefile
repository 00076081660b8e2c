# clipdyn: `make test` and `make figures` set everything up from a fresh clone (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIZE   ?= default
BENCH  ?= quick
PKG    := $(shell find clipdyn -name '*.py') pyproject.toml

.PHONY: test test-slow figures bench clean-venv criteria risk-curves concentration stability \
        when-clipping-helps schedules heuristic clip-rules dp real-data clipping-bias \
        l0l1-acceleration smoothness network-clipping

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The fast suite (5-8 minutes on 2 quiet cores, up to 14 on a busy machine); statistical and long runs are marked `slow`.
# Tests go to the two workers one at a time (xdist's default). `--dist loadfile`, which keeps a
# file's tests in one process so that they share compiled programs, was tried on 2026-11-22: 536 s
# once, then 1135 s from a fresh clone, with 22 CPU-minutes in 19 minutes of wall-clock time (a
# worker idle behind the last big file, or the VM's slow hour: the default took 866 s right after,
# with 21 CPU-minutes). Not kept: one file at a time can leave a worker idle for minutes.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -q -m slow

clean-venv:
	rm -rf $(VENV)

# ---- figures: each study saves results under figures/data, a plot script draws them --------
# `make figures SIZE=paper` writes to figures/paper/ (larger d and more seeds, for an accelerator).
# A study reruns only when its script or the package changed (make's own timestamps).
STUDIES := criteria risk_curves concentration stability when_clipping_helps schedules heuristic \
           clip_rules dp real_data clipping_bias l0l1_acceleration smoothness network_clipping
ifeq ($(SIZE),default)
FIGDIR := figures
else
FIGDIR := figures/$(SIZE)
endif
RESULTS := $(FIGDIR)/data
FIGURES := $(patsubst %,$(FIGDIR)/%.png,$(STUDIES))

# The studies are independent and mostly single-threaded: two at a time use both cores of the
# reference machine (JOBS=1 runs them one after another).
JOBS ?= 2
figures: | $(STAMP)
	$(MAKE) -j$(JOBS) --output-sync=target figure-files

.PHONY: figure-files
figure-files: $(FIGURES)

# The studies share one JAX compilation cache: compiling is about half of a long study's time on
# 2 cores, programs recur across studies (the heuristic and schedules studies compile a max-CCC
# table, an ODE and a simulation program of the same signatures) and reruns find theirs. JAX keys
# each entry by the program, the jaxlib version and the machine, so a stale entry is never used;
# `make clean-venv` removes it with the environment.
FIGURES_JAX_CACHE ?= $(VENV)/jax-cache
$(RESULTS)/%.npz: experiments/%.py experiments/common.py $(PKG) | $(STAMP)
	@mkdir -p $(RESULTS)
	JAX_COMPILATION_CACHE_DIR=$(FIGURES_JAX_CACHE) $(PY) experiments/$*.py --out $@ --size $(SIZE)

# `make real-data` runs on digits (it ships with scikit-learn, no download);
# `make real-data DATA=cifar10:path=DIR` (any data SPEC) runs the same study on your data,
# written to $(FIGDIR)/user/ so it never overwrites the gallery's digits figure.
DATA ?=
ifeq ($(strip $(DATA)),)
REAL_DATA_FIG := $(FIGDIR)/real_data.png
else
REAL_DATA_FIG := real-data-user
.PHONY: real-data-user
real-data-user: | $(STAMP)
	@mkdir -p $(FIGDIR)/user
	$(PY) experiments/real_data.py --out $(FIGDIR)/user/real_data.npz --size $(SIZE) --data "$(DATA)"
	$(PY) experiments/plot_real_data.py $(FIGDIR)/user/real_data.npz $(FIGDIR)/user/real_data.png
endif

$(FIGDIR)/%.png: experiments/plot_%.py experiments/common.py $(RESULTS)/%.npz | $(STAMP)
	$(PY) experiments/plot_$*.py $(RESULTS)/$*.npz $@

.SECONDARY:

criteria: $(FIGDIR)/criteria.png
risk-curves: $(FIGDIR)/risk_curves.png
concentration: $(FIGDIR)/concentration.png
stability: $(FIGDIR)/stability.png
when-clipping-helps: $(FIGDIR)/when_clipping_helps.png
schedules: $(FIGDIR)/schedules.png
heuristic: $(FIGDIR)/heuristic.png
clip-rules: $(FIGDIR)/clip_rules.png
dp: $(FIGDIR)/dp.png
real-data: $(REAL_DATA_FIG)
clipping-bias: $(FIGDIR)/clipping_bias.png
l0l1-acceleration: $(FIGDIR)/l0l1_acceleration.png
smoothness: $(FIGDIR)/smoothness.png
network-clipping: $(FIGDIR)/network_clipping.png

# ---- benchmarks: `make bench` (quick) or `make bench BENCH=full`; updates BENCHMARKS.md -------
bench: $(STAMP)
	$(PY) bench/bench.py --mode $(BENCH) --markdown BENCHMARKS.md
