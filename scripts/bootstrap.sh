#!/usr/bin/env bash
# Installs what sealpod's demo and tests need on a Debian machine, only what is missing:
# Debian packages (as root), a .venv, and the package itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv python3-dev gcc fuse3 bubblewrap busybox-static
  debootstrap postgresql gocryptfs sqlite3 openssl)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 3
  fi
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.sealpod-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing sealpod and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -i '^warning' >&2 || true
  # Intel's own quote verifier, used by a cross-check test where it installs (optional).
  .venv/bin/python -m pip install -q sgx-dcap-quote-verify-python >/dev/null 2>&1 \
    || echo "bootstrap: optional sgx-dcap-quote-verify-python did not install; its cross-check will skip" >&2
  .venv/bin/python -c 'import sealpod' && touch "$stamp"
fi
