#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian's `chromium` and
# `chromium-driver`) for the console's browser tests (tests/console.rs).
# Idempotent: a no-op when both are on PATH. Nothing is downloaded outside
# the distribution's packages.
set -euo pipefail

if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi
echo "browser: installing chromium and chromium-driver (apt-get)" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null 2>&1 || { echo "browser: chromium-driver installed, but no chromedriver on PATH" >&2; exit 1; }
