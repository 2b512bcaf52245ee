#!/usr/bin/env bash
# Idempotent set-up on Debian 12: the system packages the build needs, then a
# project-local virtual environment (.venv) with torch (libtorch comes from its
# wheel) and, with --test, the pinned reference packages the parity tests use.
# Each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test_deps=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --test)" >&2; exit 2 ;;
  esac
done

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  python3 python3-venv python3-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  prometheus-cpp-dev libspdlog-dev libfmt-dev libboost-dev libboost-system-dev
  nlohmann-json3-dev libcli11-dev libpng-dev libjpeg62-turbo-dev libicu-dev zlib1g-dev
  libgtest-dev libgmock-dev
  gnuplot-nox
)
# The tests also run a real Prometheus (promtool checks the rules) and render the Kubernetes
# manifests with kubectl kustomize (kubectl and hadolint come as PyPI wheels, requirements-test.txt).
# openssl makes the certificates of the TLS tests (tests/server/security_test.py).
if ((want_test_deps)); then APT_PACKAGES+=(prometheus openssl); fi
# clang and its libFuzzer and sanitizer runtimes build the fuzz targets (tests/fuzz).
if ((want_test_deps)); then APT_PACKAGES+=(clang libclang-rt-14-dev); fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# pip_install REQUIREMENTS_FILE: installs into .venv unless the same file was installed before.
pip_install() {
  local req="$1" stamp=".venv/.$(basename "$1").sha256"
  local sum
  sum=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then return 0; fi
  echo "setup: installing Python packages from $req into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  echo "$sum" > "$stamp"
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
pip_install scripts/requirements.txt
if ((want_test_deps)); then pip_install scripts/requirements-test.txt; fi
