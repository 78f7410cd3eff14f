#!/usr/bin/env bash
# Chromium for `make test`: the console's browser tests drive Debian's `chromium` package with
# Playwright (browser builds cannot be downloaded, so never `playwright install`). Installed only
# when missing; quick when it is there.
set -euo pipefail

chromium="${METERING_TEST_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
manual="install Chromium so that $chromium exists (Debian/Ubuntu: apt-get install chromium), or point METERING_TEST_CHROMIUM at a Chromium binary, then run make test again"
"$(dirname "$0")/../apt-install.sh" "the console's browser tests" "$manual" chromium fonts-dejavu-core
if [ ! -x "$chromium" ]; then
  echo "the chromium package is installed but $chromium is missing: $manual" >&2
  exit 1
fi
