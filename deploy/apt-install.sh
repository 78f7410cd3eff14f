#!/usr/bin/env bash
# Installs Debian packages for `make test` (the prometheus and browser tool scripts call it):
#   deploy/apt-install.sh "<what they are for>" "<how to install them by hand>" PACKAGE...
# Root runs apt-get directly, others through sudo; without apt-get or either, it says what to do.
set -euo pipefail

purpose="$1" manual="$2"
shift 2
if ! command -v apt-get >/dev/null; then
  echo "$* not installed and apt-get is not available: $manual" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "installing Debian's $* ($purpose) needs root (no sudo here): $manual" >&2
  exit 1
fi
echo "Installing Debian's $* for $purpose"
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >/dev/null; }; then
  echo "installing $* failed (see above): $manual" >&2
  exit 1
fi
