#!/usr/bin/env bash
# promtool and prometheus for `make test`: the alert rule tests and the alerting integration
# test run them. Debian's `prometheus` package ships both; installed only when one is missing.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
manual="install Prometheus 2.x or newer so that \`promtool\` and \`prometheus\` are on PATH (Debian/Ubuntu: apt-get install prometheus), then run make test again"
"$(dirname "$0")/../apt-install.sh" "the alert rule tests (promtool, prometheus)" "$manual" prometheus
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "the prometheus package is installed but promtool/prometheus are not on PATH (/usr/bin): $manual" >&2
  exit 1
fi
