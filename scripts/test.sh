#!/usr/bin/env bash
# Runs every test: set-up (idempotent), build, then CTest. Arguments go to ctest
# (e.g. -R unet, -L parity, -E sd15). Without arguments, tests labelled `long` (tens of minutes on two
# cores: reproducing the committed demo model) are left out; `scripts/test.sh -L long` runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/build.sh
cd "${LDCP_BUILD_DIR:-build}"
(($#)) || set -- -LE long
ctest --output-on-failure --parallel "${LDCP_JOBS:-2}" "$@"
