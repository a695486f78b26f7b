# The two commands that set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= core

# `make install` (root): the system's Python, not a user's (pyenv, conda): the service must not depend
# on anybody's home directory. INSTALL_FROM and PIP_INSTALL_OPTS allow an offline install from wheels.
PREFIX ?= /opt/sunsetd
SYSPYTHON ?= /usr/bin/python3
INSTALL_FROM ?= .
PIP_INSTALL_OPTS ?=
UNITDIR ?= /etc/systemd/system
# Links to the venv's console scripts and to the completions the wheel carries; the documentation
# (docs/SYSTEMD.md) and the GPU drop-in example (systemd/gpu.conf, not enabled) go to DOCDIR.
BINDIR ?= /usr/local/bin
BASHCOMPDIR ?= /usr/share/bash-completion/completions
ZSHCOMPDIR ?= /usr/share/zsh/vendor-completions
DOCDIR ?= /usr/share/doc/sunsetd
LINKS = $(BINDIR)/sunsetd $(BINDIR)/sunsetctl $(BASHCOMPDIR)/sunsetd $(BASHCOMPDIR)/sunsetctl \
	$(ZSHCOMPDIR)/_sunsetd $(ZSHCOMPDIR)/_sunsetctl
# Metrics ports of the template's instances (the core service uses 9464).
INSTANCE_PORTS := vision:9465 tutoring:9466 learning:9467 full:9468

# A real MCP server from npm for the tests (run with node), in an ignored folder of the checkout; where
# npm is missing those tests are skipped, saying so in one line.
NODE_DIR := .node
NODE_STAMP := $(NODE_DIR)/.installed
NODE_PACKAGES := @modelcontextprotocol/server-memory@2026.8.31

.PHONY: run test lint clean bench install uninstall compile chaos node-tools

# The checkout is installed in setuptools' compat editable mode: a plain path in a .pth. The default
# mode imports a finder (pathlib, re, importlib.util) into every interpreter: 15-20 ms of each
# `sunsetctl`, daemon and exec'd agent. setuptools calls compat transitional; where it is gone, the
# default mode is used.
$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat 2>/dev/null \
		|| $(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Byte-compile what every agent process imports: where PYTHONDONTWRITEBYTECODE is set, nothing else
# writes the .pyc files, and each agent would compile its modules again at every start.
compile: $(STAMP)
	$(BIN)/python -m compileall -q sunsetd agents

run: compile
	@echo 'sunsetd and sunsetctl by name (in another terminal too): export PATH="$(abspath $(BIN)):$$PATH"'
	$(BIN)/sunsetd --profile $(PROFILE)

$(NODE_STAMP): Makefile
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix $(NODE_DIR) $(NODE_PACKAGES) && touch $@; \
	else echo "npm not found: the tests of Node MCP servers will be skipped"; fi

node-tools: $(NODE_STAMP)

test: compile node-tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m compileall -q sunsetd agents tests bench chaos
	$(BIN)/sunsetd --profile core --check >/dev/null

chaos: compile
	$(BIN)/python chaos/run.py $(CHAOS_ARGS)

# The peers bench/peers.py compares against (supervisord, circus) come from the bench extra, installed here
# only: they are never dependencies of sunsetd.
bench: compile
	$(BIN)/pip install -q -e '.[bench]' --config-settings editable_mode=compat 2>/dev/null \
		|| $(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/restart.py
	$(BIN)/python bench/router.py
	$(BIN)/python bench/mcp.py
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) $(NODE_DIR) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

install:
	@[ "$$(id -u)" = 0 ] || { echo "make install: needs root"; exit 1; }
	getent group sunsetd >/dev/null || groupadd --system sunsetd
	getent passwd sunsetd >/dev/null || useradd --system --gid sunsetd --home-dir /var/lib/sunsetd \
		--no-create-home --shell /usr/sbin/nologin sunsetd
	[ -x $(PREFIX)/venv/bin/python ] || $(SYSPYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q --disable-pip-version-check $(PIP_INSTALL_OPTS) --upgrade $(INSTALL_FROM)
	install -d -m 0755 /etc/sunsetd /etc/sunsetd/profiles
	install -m 0644 profiles/*.yaml /etc/sunsetd/profiles/
	install -m 0644 README.md $(PREFIX)/README.md
	@# Links, not copies: upgrading the venv updates them. A file that is not a link is somebody else's.
	@# Completions only for a shell whose directory exists (/usr/share/bash-completion, /usr/share/zsh).
	@set -e; venv=$(PREFIX)/venv; \
	comp=$$($$venv/bin/python -I -c 'import importlib.util as u; print(u.find_spec("sunsetd").submodule_search_locations[0])')/completions; \
	links="$$venv/bin/sunsetd:$(BINDIR)/sunsetd $$venv/bin/sunsetctl:$(BINDIR)/sunsetctl"; \
	if [ -d $$comp ] && [ -d $(dir $(BASHCOMPDIR)) ]; then \
		links="$$links $$comp/sunsetd.bash:$(BASHCOMPDIR)/sunsetd $$comp/sunsetctl.bash:$(BASHCOMPDIR)/sunsetctl"; fi; \
	if [ -d $$comp ] && [ -d $(dir $(ZSHCOMPDIR)) ]; then \
		links="$$links $$comp/_sunsetd:$(ZSHCOMPDIR)/_sunsetd $$comp/_sunsetctl:$(ZSHCOMPDIR)/_sunsetctl"; fi; \
	for pair in $$links; do src=$${pair%%:*}; dst=$${pair#*:}; \
		if [ -e "$$dst" ] && ! [ -L "$$dst" ]; then echo "make install: $$dst exists and is not a link; not replacing it"; exit 1; fi; \
		install -d "$$(dirname "$$dst")"; ln -sfn "$$src" "$$dst"; echo "ln -sfn $$src $$dst"; done
	install -d -m 0755 $(DOCDIR)
	install -m 0644 docs/SYSTEMD.md systemd/gpu.conf $(DOCDIR)/
	for pair in $(INSTANCE_PORTS); do f=/etc/sunsetd/$${pair%%:*}.env; \
		[ -e $$f ] || echo "SUNSETD_METRICS_ADDR=127.0.0.1:$${pair##*:}" > $$f; done
	install -m 0644 systemd/sunsetd.service systemd/sunsetd@.service $(UNITDIR)/
	! [ -d /run/systemd/system ] || systemctl daemon-reload
	@echo "installed: $(PREFIX), /etc/sunsetd, $(UNITDIR)/sunsetd.service and sunsetd@.service, $(BINDIR)/sunsetd and sunsetctl;"
	@echo "  now: systemctl start sunsetd; GPU hosts: $(DOCDIR)/gpu.conf (see $(DOCDIR)/SYSTEMD.md)"

uninstall:
	@[ "$$(id -u)" = 0 ] || { echo "make uninstall: needs root"; exit 1; }
	! [ -d /run/systemd/system ] || systemctl disable --now sunsetd.service 2>/dev/null || true
	rm -f $(UNITDIR)/sunsetd.service $(UNITDIR)/sunsetd@.service
	! [ -d /run/systemd/system ] || systemctl daemon-reload
	@# only the links that point into $(PREFIX): ours
	@for l in $(LINKS); do case "$$(readlink "$$l" 2>/dev/null)" in $(PREFIX)/*) rm -f "$$l"; echo "rm $$l";; esac; done
	rm -rf $(PREFIX) /etc/sunsetd $(DOCDIR)
	! getent passwd sunsetd >/dev/null || userdel sunsetd
	! getent group sunsetd >/dev/null || groupdel sunsetd
	@echo "uninstalled (state in /var/lib/sunsetd, model caches in /var/cache/sunsetd and your own drop-ins in $(UNITDIR)/sunsetd*.service.d, if any, are left for you to remove)"
