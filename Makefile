# make demo  - the end-to-end LoRA demo (creates .venv on first use)
# make test  - the whole test suite, notebooks included, then the site from the notebooks it ran
# make docs  - the course's static site in build/site (executes only notebooks that changed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast docs notebooks pretrain findings analyze bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/minilora demo

# One BLAS thread: the test models are tiny, and threads only add start-up cost and contention.
# tests/test_notebooks.py executes every notebook once and keeps the executed copies in
# build/notebooks; the site is then built from those copies, without running anything again.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests
	$(BIN)/python docs/build_site.py --from-test-run

test-fast: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not slow"

docs: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python docs/build_site.py

notebooks: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	$(BIN)/jupyter lab tutorials/

pretrain: $(STAMP)
	$(BIN)/minilora pretrain

findings analyze: $(STAMP)
	$(BIN)/minilora findings

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache reports runs build
