#!/usr/bin/env bash
# Debian packages the tests and the demo run for real: redis-server (the RQ job queue's store) and Chromium with
# its WebDriver (the browser test of what annotators see). Installed with apt as root (CI runs as root); skipped
# when every command is already there. Nothing is downloaded at test time.
#   scripts/system_packages.sh            # install what is missing
#   scripts/system_packages.sh --check    # exit 1 and name what is missing
set -euo pipefail
declare -A PACKAGE_OF=([redis-server]=redis-server [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for command in "${!PACKAGE_OF[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$command]}")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "installing ${missing[*]} needs root: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# the package starts a redis-server service where an init system runs; the tests start their own on a free port
