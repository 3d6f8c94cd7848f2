#!/usr/bin/env bash
# Browser tests drive Debian's Chromium. Install it when it is missing and we
# may (root with apt-get); otherwise say how, and the browser tests will skip.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: installing Debian's chromium for the browser tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "ensure-chromium: chromium not found; install it (sudo apt-get install chromium)" \
    "or the browser tests will be skipped" >&2
fi
