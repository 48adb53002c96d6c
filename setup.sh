#!/usr/bin/env bash
# netdiag set-up: installs what it needs (apt packages when root, a venv, the package) and
# then runs one job. Idempotent: a second run only re-installs what changed.
#   bash setup.sh demo   # the main job: a real diagnosis on the embedded stack
#   bash setup.sh test   # the whole test suite
#   bash setup.sh        # install only
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(iproute2 iptables nftables conntrack ipset socat procps python3-venv chromium clang llvm bpftool bpftrace)
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.netdiag-installed
# requirements.lock pins every dependency (runtime, embedded, lab, test) with its hashes: a fresh
# clone installs exactly what CI tested. Re-pin with .ci/lock after changing pyproject.toml.
want=$(cat pyproject.toml lab/pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing netdiag and its locked dependencies into .venv" >&2
  # metadata an older install left in the tree is importable from here and would still declare the
  # lab plugin as netdiag's (the lab is its own distribution now): `netdiag` would register it twice
  rm -rf netdiag.egg-info lab/*.egg-info
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . -e ./lab
  echo "$want" > "$stamp"
fi

case "${1:-}" in
  demo)
    if [ "$(id -u)" = 0 ]; then
      exec .venv/bin/netdiag lab demo
    fi
    echo "setup: not root, so no network-namespace lab; diagnosing the bundled snapshot instead" >&2
    exec .venv/bin/netdiag diagnose --snapshot examples/snapshots/shop \
      --src 10.244.1.2 --dst 10.96.0.100 --port 80 --protocol tcp
    ;;
  test)
    shift
    set +e
    .venv/bin/python -m pytest -q "$@"
    rc=$?
    # pytest exits 5 when it collected no tests: that must never pass silently
    if [ $rc = 5 ]; then echo "setup: no tests were collected" >&2; exit 1; fi
    exit $rc
    ;;
  "") ;;
  *) echo "usage: bash setup.sh [demo|test]" >&2; exit 3 ;;
esac
