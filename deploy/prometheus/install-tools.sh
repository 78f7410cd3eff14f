#!/usr/bin/env bash
# promtool and prometheus for `make test`: the alert rule tests and the alerting integration
# test run them. Debian's `prometheus` package ships both; installed only when one is missing.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
manual="install Prometheus 2.x or newer so that \`promtool\` and \`prometheus\` are on PATH (Debian/Ubuntu: apt-get install prometheus), then run make test again"
if ! command -v apt-get >/dev/null; then
  echo "promtool/prometheus not found and apt-get is not available: $manual" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "promtool/prometheus not found, and installing Debian's prometheus package needs root (no sudo here): $manual" >&2
  exit 1
fi
echo "Installing Debian's prometheus package (promtool, prometheus) for the alert rule tests"
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
  echo "installing the prometheus package failed (see above): $manual" >&2
  exit 1
fi
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "the prometheus package is installed but promtool/prometheus are not on PATH (/usr/bin): $manual" >&2
  exit 1
fi
