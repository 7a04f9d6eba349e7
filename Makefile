# Two commands for a fresh machine: `make run` serves on :3001, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq
# The JavaScript client's tests need a WebSocket in node (20.10 and newer).
NODE_MINIMUM := 20.10

.PHONY: run test install system-packages clean

run: $(STAMP)
	$(BIN)/mojavox-notify serve --settings settings.yaml

test: $(STAMP) system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The tests use a real redis-server, Debian's chromium (driven by Playwright, which never
# downloads a browser) and node for the JavaScript client: installed from the distribution
# when missing. An old node is not silently accepted.
system-packages:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; $(APT_INSTALL) redis-server; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium"; $(APT_INSTALL) chromium; }
	@command -v node >/dev/null 2>&1 || { \
		echo "installing nodejs"; $(APT_INSTALL) nodejs; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); const [x, y] = "$(NODE_MINIMUM)".split(".").map(Number); process.exit(a > x || (a === x && b >= y) ? 0 : 1)' || { \
		echo "node $$(node --version) is too old: the JavaScript client's tests need node >= $(NODE_MINIMUM) (https://nodejs.org or NodeSource's packages)" >&2; exit 1; }

clean:
	rm -rf $(VENV) *.egg-info
