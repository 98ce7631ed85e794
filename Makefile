# One set of commands for people and CI.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo bench clean report-screenshot

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# quiet setuptools' warning, on every editable install, about folders named like the package
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

# Two workers, whole files at a time (a module's fixtures are built once): about one core
# of the suite's time waits on processes and servers. PYTEST_WORKERS=0 runs it serially.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check aster_agents tests bench
	$(BIN)/ruff format --check aster_agents tests bench
	$(BIN)/mypy
	$(BIN)/python -m tests.kit.architecture

demo: $(STAMP)
	$(BIN)/aster-agent demo

# docs/report.png: a 90 s demo (10 agents, simulated exchange), its report, headless Chromium.
CHROMIUM ?= chromium
report-screenshot: $(STAMP)
	@set -e; run=$$(mktemp -d /tmp/aster-report.XXXXXX); trap 'rm -rf "$$run"' EXIT; \
	$(BIN)/aster-agent --state-dir "$$run/demo" demo --duration 90 --json > "$$run/demo.json"; \
	$(BIN)/aster-agent --config-dir "$$run/demo/agents.d" --state-dir "$$run/demo/state" \
		report --out "$$run/report.html"; \
	$(CHROMIUM) --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync \
		--hide-scrollbars --user-data-dir="$$run/chromium" --window-size=1100,2050 \
		--screenshot="$$run/report.png" "file://$$run/report.html" 2> "$$run/chromium.log"; \
	mkdir -p docs; cp "$$run/report.png" docs/report.png; echo "wrote docs/report.png"

bench: $(STAMP)
	$(BIN)/python bench/sign.py --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
