# The two commands of the README:  `make book` builds the book into _build/html;  `make test` runs every test.
# Both create .venv and install what they need on first use (the torch already in .venv is never replaced).

VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the pinned CPU build when available (a local wheel on our CI machines), else the platform's default.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install book test chapter student grade benchmark clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import torch, diffedu; print('torch', torch.__version__, '| diffedu', diffedu.__version__)"
	touch $@

install: $(VENV)/.installed

book: install
	$(VENV)/bin/jupyter-book build . --all --warningiserror --keep-going

# Two xdist workers on two cores: one torch thread each (two threads per process thrash a 2-core machine).
test: install
	OMP_NUM_THREADS=1 DIFFEDU_STATIC=1 $(PY) -m pytest -n 2 --dist loadfile --nbval --nbval-sanitize-with tests/sanitize.cfg \
		tests chapters $(PYTEST_ARGS)

# Re-make one chapter from its MyST source chapters/md/NN_*.md: sync, execute, tag (e.g. make chapter N=05).
chapter: install
	@test -n "$(N)" || (echo "usage: make chapter N=05" && exit 2)
	$(PY) scripts/make_chapter.py $(N)

# Student versions of every chapter into student/ (COLAB_BASE=https://github.com/ORG/REPO/blob/BRANCH/FOLDER: where
# you publish them, so that their Colab badges open them there).
student: install
	$(PY) -m diffedu.exercises chapters student $(if $(COLAB_BASE),--colab-base $(COLAB_BASE))

# Grade submitted/<student>/<chapter>.ipynb into a per-exercise table (printed, and written to grades.csv).
SUBMITTED ?= submitted
grade: install
	OMP_NUM_THREADS=1 $(PY) -m diffedu.grade $(SUBMITTED) --source chapters --csv grades.csv

benchmark: install
	$(PY) scripts/benchmark.py
	$(PY) scripts/benchmark_manifold.py

clean:
	rm -rf _build student grades.csv
