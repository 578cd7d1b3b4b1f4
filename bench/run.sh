#!/usr/bin/env bash
# Runs Berth and distribution side by side and prints a comparison table.
# Usage: bench/run.sh [--quick] [--berth PATH] [--distribution PATH] [--keep]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

berth="$root/target/release/berth"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --berth) berth="${args[$((i + 1))]:-}" ;;
    --berth=*) berth="${args[$i]#--berth=}" ;;
  esac
done

for tool in python3 skopeo wrk curl du; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done

if [[ ! -x "$berth" ]]; then
  if [[ "$berth" == "$root/target/release/berth" ]]; then
    echo "run.sh: building berth (release)" >&2
    (cd "$root" && cargo build --release --bin berth)
  else
    echo "run.sh: $berth is not an executable" >&2
    exit 1
  fi
fi

exec python3 "$here/bench.py" --berth "$berth" "$@"
