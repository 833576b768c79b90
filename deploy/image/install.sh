#!/bin/sh
# Installs falco-correlator from a source tree into a new virtualenv, the way the image does:
#
#   deploy/image/install.sh SRC VENV
#
# deploy/Dockerfile's build stage runs exactly this, and `make test` runs it too (into a
# temporary directory, then `falco-correlator validate` and `test` on the shipped rules from that
# install), so a broken install step fails the tests, not the first image build.
set -eu
src="$1"
venv="$2"
python="${PYTHON_FOR_IMAGE:-python3}"
wheels="$(mktemp -d)"
trap 'rm -rf "${wheels}"' EXIT
# The wheel alone: its dependencies come from the index, as pinned by pyproject.toml's ranges.
"${python}" -m pip wheel --quiet --no-deps --wheel-dir "${wheels}" "${src}"
"${python}" -m venv "${venv}"
"${venv}/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "${wheels}"/falco_correlator-*.whl
"${venv}/bin/falco-correlator" --help >/dev/null
