# Two commands for a fresh machine: `make run` serves on :3001, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq
# The JavaScript client's tests need a WebSocket in node (20.10 and newer); the React package's
# tools (Vite 8, Vitest 4) need 20.19.
NODE_MINIMUM := 20.19

.PHONY: run test install lock system-packages node-packages clean

run: $(STAMP)
	$(BIN)/mojavox-notify serve --settings settings.yaml

test: $(STAMP) system-packages node-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# Versions from requirements.lock, so a fresh machine runs what the suite last passed with.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

# requirements.lock anew from pyproject.toml, in a throwaway venv (newest versions its ranges allow).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[test]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

# The tests use a real redis-server, a real nats-server (JetStream, for the stream source),
# Debian's chromium (driven by Playwright, which never downloads a browser) and node for the
# JavaScript client: installed from the distribution when missing. An old node is not silently
# accepted. Debian puts nats-server in /usr/sbin, which a user's PATH often lacks.
system-packages:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server"; $(APT_INSTALL) redis-server; }
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || { \
		echo "installing nats-server"; $(APT_INSTALL) nats-server; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium"; $(APT_INSTALL) chromium; }
	@command -v node >/dev/null 2>&1 || { \
		echo "installing nodejs"; $(APT_INSTALL) nodejs; }
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing npm"; $(APT_INSTALL) npm; }
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); const [x, y] = "$(NODE_MINIMUM)".split(".").map(Number); process.exit(a > x || (a === x && b >= y) ? 0 : 1)' || { \
		echo "node $$(node --version) is too old: the JavaScript client's and React package's tests need node >= $(NODE_MINIMUM) (https://nodejs.org or NodeSource's packages)" >&2; exit 1; }

# The browser clients' npm workspace (clients/js types, clients/react, its example): exactly
# clients/package-lock.json, again only when the lock file changed.
NODE_STAMP := clients/node_modules/.package-lock.json
node-packages: $(NODE_STAMP)

$(NODE_STAMP): clients/package-lock.json | system-packages
	npm ci --prefix clients --no-audit --no-fund
	touch $(NODE_STAMP)

clean:
	rm -rf $(VENV) *.egg-info clients/node_modules clients/react/dist clients/react/example/dist
