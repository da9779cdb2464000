# Two entry points for a fresh machine (Debian, Python 3.11, root): `make run` and `make test`.
# Both create .venv/ and install what is missing: Python packages, and from Debian's packages DCMTK,
# dicom3tools and PixelMed (libpixelmed-java) (peers and validators in the tests), Orthanc with its DICOMweb, Web
# Viewer and GDCM plugins (integration tests, `python -m tools.demo`), Chromium (the browser check of the Web Viewer), redis-server (the
# scale-out queue's tests), openssl (test certificates for DICOM TLS) and docker-compose (to validate
# docker-compose.yml).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := dcmtk dicom3tools libpixelmed-java orthanc orthanc-dicomweb orthanc-webviewer orthanc-gdcm chromium redis-server openssl
STAMP := $(VENV)/.installed

.PHONY: run test setup

run: setup
	$(BIN)/knee-node serve

test: setup
	$(BIN)/ruff check node tests bench tools
	$(BIN)/pytest

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for tool in storescu dciodvfy Orthanc chromium redis-server openssl docker-compose; do command -v $$tool >/dev/null || missing=1; done; \
	test -e /usr/share/orthanc/plugins/libOrthancWebViewer.so || missing=1; \
	test -e /usr/share/java/pixelmed.jar || missing=1; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and by pip: the pinned wheels lie on this machine's disk (uv or poetry would download ~3 GB).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)
