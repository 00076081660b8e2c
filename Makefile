# clipdyn: `make test` and `make figures` set everything up from a fresh clone (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIZE   ?= default
BENCH  ?= quick
PKG    := $(wildcard clipdyn/*.py) pyproject.toml
DATA   := figures/data

.PHONY: test test-slow figures bench clean-venv criteria risk-curves concentration stability \
        when-clipping-helps schedules heuristic

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The fast suite (< 10 minutes on 2 cores); statistical and long runs are marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -q -m slow

clean-venv:
	rm -rf $(VENV)

# ---- figures: each study saves results under figures/data, a plot script draws them --------
# `make figures SIZE=paper` writes to figures/paper/ (larger d and more seeds, for an accelerator).
# A study reruns only when its script or the package changed (make's own timestamps).
STUDIES := criteria risk_curves concentration stability when_clipping_helps schedules heuristic
ifeq ($(SIZE),default)
FIGDIR := figures
else
FIGDIR := figures/$(SIZE)
endif
DATA := $(FIGDIR)/data
FIGURES := $(patsubst %,$(FIGDIR)/%.png,$(STUDIES))

figures: $(FIGURES)

$(DATA)/%.npz: experiments/%.py experiments/common.py $(PKG) | $(STAMP)
	@mkdir -p $(DATA)
	$(PY) experiments/$*.py --out $@ --size $(SIZE)

$(FIGDIR)/%.png: experiments/plot_%.py experiments/common.py $(DATA)/%.npz | $(STAMP)
	$(PY) experiments/plot_$*.py $(DATA)/$*.npz $@

.SECONDARY:

criteria: $(FIGDIR)/criteria.png
risk-curves: $(FIGDIR)/risk_curves.png
concentration: $(FIGDIR)/concentration.png
stability: $(FIGDIR)/stability.png
when-clipping-helps: $(FIGDIR)/when_clipping_helps.png
schedules: $(FIGDIR)/schedules.png
heuristic: $(FIGDIR)/heuristic.png

# ---- benchmarks: `make bench` (quick) or `make bench BENCH=full`; updates BENCHMARKS.md -------
bench: $(STAMP)
	$(PY) bench/bench.py --mode $(BENCH) --markdown BENCHMARKS.md
