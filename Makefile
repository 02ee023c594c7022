# The Robust Manifold Defense, hands-on: build and test.
#
#   make book   run every notebook (profile standard) and build the HTML into _build/html
#   make test   unit tests, every notebook in profile smoke, results checks, strict build,
#               and the built site checked in headless Chromium
#
# Both create .venv on first use. See README.md for the other targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Profile of `make book`; `make book PROFILE=paper` on a GPU machine.
PROFILE ?= standard
# `make book` builds the student book (exercise solutions hidden); `make book-instructor`
# builds the instructor book from the same executed notebooks.
AUDIENCE ?= student
SMOKE := _build/smoke
# The install is redone when pyproject.toml's or this file's content changes (the latter
# pins torchattacks, installed apart from pyproject's extras).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile package-lock.json 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: help venv book book-instructor assignments test sync clean distclean set-repo-url colab-dryrun

help:
	@echo "make book              run the notebooks (profile $(PROFILE)) and build _build/html"
	@echo "make book-instructor   the instructor book (solutions shown) into _build/html-instructor"
	@echo "make assignments       student, solution, Gradescope and nbgrader releases of the assignments into _build/assignments"
	@echo "make test              unit tests, smoke run of every notebook, results checks, strict builds, site check"
	@echo "make colab-dryrun      every chapter on the CPU at the colab sizes, iterations cut to 2"
	@echo "make venv              create .venv and install the project with its book and test extras"
	@echo "make sync              re-pair notebooks/*.ipynb with their jupytext .py twins"
	@echo "make set-repo-url URL=https://github.com/OWNER/REPO   point badges and buttons elsewhere"
	@echo "make clean             remove _build/;  make distclean also removes .venv/"

venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip  # editable installs need pip >= 21.3
	$(PY) -m pip install -e '.[book,test]'
	@# torchattacks: test-only (tests/test_torchattacks_crosscheck.py). --no-deps, because its
	@# pinned requests~=2.25.1 would downgrade the requests that the book toolchain needs.
	$(PY) -m pip install --no-deps torchattacks==3.5.1
	@$(MAKE) --no-print-directory system-data node-assets
	@# An editable install made before rmd_lib/__init__.py existed cannot import it;
	@# leave the stamp unwritten so that the next run installs again. (-I: so that the
	@# rmd_lib/ folder in the working directory does not stand in for the install.)
	@if $(PY) -I -c 'import rmd_lib, rmd_course' 2>/dev/null; then \
	  rm -f $(VENV)/.installed-*; touch $@; \
	else \
	  echo "note: rmd_lib or rmd_course does not import yet; the install will be redone next time"; \
	fi

# Debian's dataset-fashion-mnist: the offline source of Fashion-MNIST. Optional.
.PHONY: system-data
system-data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST (Debian package) is present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist \
	  || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will need torchvision's download"; \
	else \
	  echo "note: not root or no apt-get; skipped dataset-fashion-mnist (Fashion-MNIST then needs torchvision's download)"; \
	fi

# MathJax from npm (package-lock.json), served by the site itself so that math renders
# offline. Needs Node.js's npm; as root, Debian's npm is installed when it is missing.
.PHONY: node-assets
node-assets:
	@if [ -d node_modules/mathjax ]; then \
	  echo "MathJax (npm) is present"; \
	else \
	  if ! command -v npm >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm \
	    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; }; \
	  fi; \
	  if command -v npm >/dev/null; then npm ci --no-audit --no-fund; \
	  else echo "note: no npm; the book will load MathJax from a CDN (make test needs npm)"; fi; \
	fi

book: venv
	$(PY) scripts/run_notebooks.py --profile $(PROFILE) --out _build/$(PROFILE)
	$(PY) scripts/build_book.py --executed _build/$(PROFILE)/notebooks --out _build/html \
	  --audience $(AUDIENCE)

# Reuses the notebooks that `make book` executed.
book-instructor: venv
	$(PY) scripts/build_book.py --executed _build/$(PROFILE)/notebooks \
	  --out _build/html-instructor --name $(PROFILE)-instructor --audience instructor

# Every chapter on the CPU at the colab profile's sizes with every iteration count cut to 2:
# finds shape and memory errors of the GPU profile in minutes; prints each chapter's peak RSS.
# The memory budget is about what a 16 GB T4 leaves a chunk (rmd_lib.memory.CUDA_SHARE).
# Not part of `make test`.
colab-dryrun: venv
	RMD_MEMORY_GB=$${RMD_MEMORY_GB:-7} $(PY) scripts/run_notebooks.py --profile colab-dryrun \
	  --out _build/colab-dryrun

assignments: venv
	$(PY) -m rmd_course.course release --out _build/assignments

test: venv
	RMD_REQUIRE_TORCHATTACKS=1 $(PY) -m pytest tests --ignore=tests/test_results.py
	rm -rf $(SMOKE)
	RMD_STRICT=1 $(PY) scripts/run_notebooks.py --profile smoke --out $(SMOKE)
	RMD_REQUIRE_RESULTS=1 RMD_RESULTS_DIR=$(SMOKE)/results RMD_EXPECT_PROFILE=smoke \
	  $(PY) -m pytest tests/test_results.py
	$(PY) scripts/build_book.py --executed $(SMOKE)/notebooks --out $(SMOKE)/html --strict
	$(PY) scripts/build_book.py --executed $(SMOKE)/notebooks --out $(SMOKE)/html-instructor \
	  --name smoke-instructor --audience instructor --strict
	$(PY) scripts/check_site.py $(SMOKE)/html --toc _build/stage-smoke/_toc.yml
	$(PY) scripts/check_site.py $(SMOKE)/html-instructor --toc _build/stage-smoke-instructor/_toc.yml

# Each pair is updated from its newer file; a .py without its .ipynb gets one.
sync: venv
	$(VENV)/bin/jupytext --sync $(sort $(wildcard notebooks/*.ipynb notebooks/*.py))

set-repo-url:
	@test -n "$(URL)" || { echo "usage: make set-repo-url URL=https://github.com/OWNER/REPO"; exit 2; }
	$(PYTHON) scripts/set_repo_url.py '$(URL)'

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV) node_modules
