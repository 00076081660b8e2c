# clipdyn: `make test` and `make figures` set everything up from a fresh clone (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIZE   ?= default
BENCH  ?= quick
PKG    := $(wildcard clipdyn/*.py) pyproject.toml
DATA   := figures/data

.PHONY: test test-slow figures bench clean-venv criteria risk-curves concentration \
        stability when-clipping-helps schedules heuristic

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
FIGURES := figures/criteria.png

figures: $(FIGURES)

criteria: figures/criteria.png
$(DATA)/criteria.npz: experiments/criteria.py $(PKG) | $(STAMP)
	$(PY) experiments/criteria.py --out $@ --size $(SIZE)
figures/criteria.png: experiments/plot_criteria.py $(DATA)/criteria.npz | $(STAMP)
	$(PY) experiments/plot_criteria.py $(DATA)/criteria.npz $@
