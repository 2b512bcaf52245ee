#!/usr/bin/env bash
# Runs every test: set-up (idempotent), build, then CTest. Arguments go to ctest
# (e.g. -R unet, -L parity, -E sd15). Without arguments, tests labelled `long` (tens of minutes on two
# cores: reproducing the committed demo model) are left out; `scripts/test.sh -L long` runs them.
# `scripts/test.sh --sanitize address,undefined` or `--sanitize thread`: the sanitizer builds
# (build-asan/, build-tsan/) and their suites instead (scripts/sanitize.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --sanitize) shift; exec scripts/sanitize.sh "$@" ;;
  --sanitize=*) kind=${1#--sanitize=}; shift; exec scripts/sanitize.sh "$kind" "$@" ;;
esac
scripts/setup.sh --test
scripts/build.sh
cd "${LDCP_BUILD_DIR:-build}"
(($#)) || set -- -LE long
ctest --output-on-failure --parallel "${LDCP_JOBS:-2}" "$@"
