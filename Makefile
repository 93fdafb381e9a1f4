# Everything installs from nothing into .venv: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: install browser demo test lint bench bench-quick bench-records bench-tangshi clean

# torch is pinned to the CPU build first, so that the looser `torch>=2.5` in pyproject.toml is
# already satisfied and pip never pulls the multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Bytecode written now: where PYTHONDONTWRITEBYTECODE is set (containers, CI), Python would
	# otherwise compile every charrnn module again at each start (about 0.06 s of every command here).
	$(BIN)/python -m compileall -q charrnn
	touch $(STAMP)

install: $(STAMP)

demo: install
	@mkdir -p $(DEMO)
	$(BIN)/charrnn train pydoc -o $(DEMO)/model.pt --time-budget 100 --val-every 100
	$(BIN)/charrnn generate -m $(DEMO)/model.best.pt --prefix "The " -n 400 --temperature 0.8 --seed 1

# The web page's tests run it in headless Chromium; where none is installed they try Debian's package
# (as root), and otherwise skip with their reason.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && timeout 600 apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium is not installed: the browser tests will skip"

test: install browser
	$(BIN)/ruff check charrnn tests bench
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check charrnn tests bench

bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

bench-records: install
	$(BIN)/python bench/records.py

bench-tangshi: install
	$(BIN)/python bench/run.py --only tangshi

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache *.egg-info
