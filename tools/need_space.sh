#!/usr/bin/env bash
# tools/need_space.sh MB DIR WHAT
# Exits 2 with a message naming WHAT when the filesystem that holds DIR has less than MB megabytes
# free, so that set-up stops before a large install rather than inside pip with "No space left on
# device". Measured needs (x86_64, 2026-12-05): the pinned .venv 6.3 GB; an extra host's venv
# (torch 2.10.0 with its CUDA libraries, downloaded) 8.1 GB on disk and 11.5 GB at its peak while pip
# installs it (pip run with --no-cache-dir; its cache would keep another ~4 GB of wheels);
# the test models in .cache 4.1 GB.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: tools/need_space.sh MB DIR WHAT" >&2; exit 2; }
need=$1 dir=$2 what=$3
while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
free=$(df -Pm "$dir" | awk 'NR == 2 { print $4 }')
if [ "$free" -lt "$need" ]; then
  echo "not enough disk space for $what: it needs about $((need / 1000)) GB free on the filesystem of $dir," \
       "which has $((free / 1000)) GB free. Free some space there (or point TMPDIR and this checkout at a larger disk) and run again." >&2
  exit 2
fi
