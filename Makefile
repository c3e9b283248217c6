# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-router bench-peers plotly-bundle clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/infermesh up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/api.py

bench-router: $(STAMP)
	$(BIN)/python bench/router.py

# The peer routers (vllm-router, smg) live in their own venv; this is the only step that downloads.
PEERS       := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): bench/peers/requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q -r bench/peers/requirements.txt
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/router.py --peers

clean:
	rm -rf $(VENV) build *.egg-info

# The dashboard charts' plotly.js (dashboard/assets/): built from the plotly.js that plotly.py
# writes figures for, from npm, with its trace types only. Run after upgrading plotly (a test
# says when).
plotly-bundle: $(STAMP)
	version=$$($(BIN)/python -c 'import plotly.offline as o; print(o.get_plotlyjs_version())') && \
	tmp=$$(mktemp -d) && \
	npm install --silent --no-audit --no-fund --prefix $$tmp plotly.js@$$version \
		esbuild@0.28.2 esbuild-plugin-inline-css@0.0.1 esbuild-plugin-environment@0.5.0 && \
	rm -f dashboard/assets/plotly-dashboard-*.min.js && \
	NODE_PATH=$$tmp/node_modules node dashboard/assets/build/build.js $$version && \
	rm -rf $$tmp
