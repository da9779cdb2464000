# Two entry points for a fresh machine (Debian, Python 3.11, root): `make run` and `make test`.
# Both create .venv/ and install what is missing: Python packages, and from Debian's packages DCMTK,
# dicom3tools and PixelMed (libpixelmed-java) (peers and validators in the tests), Orthanc with its DICOMweb, Web
# Viewer and GDCM plugins (integration tests, `python -m tools.demo`), Chromium and Node.js (the browser checks of
# the Web Viewer and OHIF), redis-server (the scale-out queue's tests), openssl (test certificates for DICOM TLS)
# and docker-compose (to validate docker-compose.yml).  From npm, pinned, into build/browser (not committed):
# OHIF's built viewer (@ohif/app's dist/) and playwright-core, for the OHIF test and the demo.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := dcmtk dicom3tools libpixelmed-java orthanc orthanc-dicomweb orthanc-webviewer orthanc-gdcm chromium redis-server openssl
# Node.js and npm only where missing: a NodeSource nodejs carries its own npm and conflicts with Debian's.
NODE_PACKAGES := $(if $(shell command -v npm),,nodejs npm)
STAMP := $(VENV)/.installed
OHIF_VERSION := 3.13.2
PLAYWRIGHT_VERSION := 1.65.1
BROWSER_DIR := build/browser
BROWSER_STAMP := $(BROWSER_DIR)/.installed-$(OHIF_VERSION)-$(PLAYWRIGHT_VERSION)

.PHONY: run test setup

run: setup
	$(BIN)/knee-node serve

test: setup
	$(BIN)/ruff check node tests bench tools
	$(BIN)/pytest

setup: $(STAMP) $(BROWSER_STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for tool in storescu dciodvfy Orthanc chromium node npm redis-server openssl docker-compose; do command -v $$tool >/dev/null || missing=1; done; \
	test -e /usr/share/orthanc/plugins/libOrthancWebViewer.so || missing=1; \
	test -e /usr/share/java/pixelmed.jar || missing=1; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) $(NODE_PACKAGES) \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and by pip: the pinned wheels lie on this machine's disk (uv or poetry would download ~3 GB).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(BROWSER_STAMP): | $(STAMP)
	rm -rf $(BROWSER_DIR) && mkdir -p $(BROWSER_DIR)
	cd $(BROWSER_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null \
		&& tar xzf ohif-app-$(OHIF_VERSION).tgz package/dist && mv package/dist ohif && rm -rf package ohif-app-*.tgz
	npm install --silent --no-save --no-package-lock --prefix $(BROWSER_DIR) playwright-core@$(PLAYWRIGHT_VERSION)
	touch $@
