#!/usr/bin/env bash
# Place the Fashion-MNIST gzipped IDX files (60k train, 10k test) under data/fashion-mnist/ (or $1).
#
# Source: the Debian package `dataset-fashion-mnist`, so it works on machines that reach only the Debian
# mirrors. apt verifies the package against the signed archive index; the package is unpacked with
# `dpkg -x` into a temp dir and never installed. Idempotent: does nothing when the four files are there.
# Then use `source: idx:data/fashion-mnist` in a search space.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/data/fashion-mnist}"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
pkg=dataset-fashion-mnist
inside=usr/share/datasets/fashion-mnist   # layout checked with `dpkg -c` on 0.0~git20200523.55506a9-1

have_all() { for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done; }

if have_all; then
    echo "Fashion-MNIST already in $dest"
    exit 0
fi

command -v apt-get >/dev/null || { echo "error: apt-get not found; this script needs Debian/Ubuntu apt." >&2; exit 1; }

# Refresh the package index only when it does not know the package (a fresh container has no lists).
policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"   # no `| grep -q`: SIGPIPE + pipefail misfires
if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "error: apt does not know $pkg; run 'sudo apt-get update' first, then re-run this script." >&2
        exit 1
    fi
    echo "apt-get update (the package index does not list $pkg yet)"
    apt-get update -qq
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# apt downloads as the unprivileged _apt user when it can; give it the temp dir to avoid a sandbox warning.
if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi

echo "Downloading $pkg from the Debian archive"
(cd "$tmp" && apt-get download -qq "$pkg")
deb=("$tmp"/"$pkg"_*.deb)
[[ -f "${deb[0]}" ]] || { echo "error: apt-get download produced no .deb in $tmp" >&2; exit 1; }
dpkg -x "${deb[0]}" "$tmp/root"

mkdir -p "$dest"
for f in "${files[@]}"; do
    src="$tmp/root/$inside/$f"
    [[ -s "$src" ]] || { echo "error: $f not found in ${deb[0]##*/} under /$inside; has the package layout changed?" >&2; exit 1; }
    cp "$src" "$dest/$f.part" && mv "$dest/$f.part" "$dest/$f"   # a killed copy never leaves a short file behind
done
# Keep the dataset's license (MIT) next to the data.
cp "$tmp/root/usr/share/doc/$pkg/copyright" "$dest/copyright" 2>/dev/null || true

echo "Fashion-MNIST (${deb[0]##*/}) -> $dest"
ls -l "$dest"
