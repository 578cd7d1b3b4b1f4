#!/usr/bin/env bash
# Runs every test. Installs what the tests need when it is missing:
# skopeo, podman, chromium and chromium-driver (Debian packages), oras and
# selenium (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v podman >/dev/null || need_apt+=(podman)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c "import oras, selenium" 2>/dev/null || python3 -m pip install -q oras selenium

if docker info >/dev/null 2>&1; then
    echo "Docker engine: available, Docker client tests will run"
else
    echo "Docker engine: not available, Docker client tests will be skipped"
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
