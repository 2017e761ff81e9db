# Two commands: `make run` builds the embedded ELPV example, `make test` runs the test suite.
# Both create .venv and install the project with its build tools (pinned torch) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/elpv.yaml
# The report test renders HTML in headless Chromium (tests/browser.py): Debian's package, not a download.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test install browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[build,dev,tracking]'
	touch $(STAMP)

install: $(STAMP)

browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

run: $(STAMP)
	@$(BIN)/edgepipe build $(CONFIG) --junit build/junit.xml || { rc=$$?; \
	  if [ $$rc -eq 3 ]; then echo "make run: the build finished, but an artifact failed its gates (exit 3): see the table above" >&2; fi; \
	  exit $$rc; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf build dist
