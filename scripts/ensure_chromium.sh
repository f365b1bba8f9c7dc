#!/usr/bin/env bash
# Make Debian's `chromium` available for the browser tests (nas ui, nas report). Idempotent: prints the
# browser's path and exits when one is on the PATH. As root it installs the `chromium` package with apt
# (refreshing the index only when apt does not know the package); otherwise it says what to run.
set -euo pipefail

# One at a time: two pytest workers may both ask for the browser, and apt/dpkg allow one install at a time.
exec 9>"${TMPDIR:-/tmp}/nas-ensure-chromium.lock"
flock 9

for name in chromium chromium-browser google-chrome; do
    if path="$(command -v "$name")"; then
        echo "$path"
        exit 0
    fi
done

command -v apt-get >/dev/null || { echo "error: no chromium on the PATH and no apt-get to install it." >&2; exit 1; }
if [[ $EUID -ne 0 ]]; then
    echo "error: chromium is missing; run 'sudo apt-get install -y chromium' (Debian) and rerun." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
policy="$(apt-cache policy chromium 2>/dev/null || true)"
if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
    apt-get update -qq >&2
fi
apt-get install -y -qq --no-install-recommends chromium >&2
command -v chromium
