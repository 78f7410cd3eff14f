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
if ! command -v apt-get >/dev/null; then
  echo "Chromium not found at $chromium and apt-get is not available: $manual" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "Chromium not found at $chromium, and installing Debian's chromium package needs root (no sudo here): $manual" >&2
  exit 1
fi
echo "Installing Debian's chromium package for the console's browser tests"
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
  echo "installing the chromium package failed (see above): $manual" >&2
  exit 1
fi
if [ ! -x "$chromium" ]; then
  echo "the chromium package is installed but $chromium is missing: $manual" >&2
  exit 1
fi
