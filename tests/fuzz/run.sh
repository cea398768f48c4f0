#!/usr/bin/env bash
# Builds and runs the tunnel frame fuzzer for SECONDS (default 30) on a copy of the seed corpus.
# Exits non-zero if libFuzzer finds a crash, leak, sanitizer report or timeout.
set -euo pipefail
seconds="${1:-30}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

srcs=("${here}/frame_fuzz.cc" "${root}/dataplane/tunnel/frame.cc"
    "${root}/dataplane/tunnel/mux.cc" "${root}/dataplane/base/log.cc")
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"${root}" "${srcs[@]}" -o "${work}/frame_fuzz" -lpthread

cp -r "${here}/corpus/frame" "${work}/corpus"
mkdir -p "${work}/artifacts"
set +e
"${work}/frame_fuzz" -max_total_time="${seconds}" -print_final_stats=1 \
    -artifact_prefix="${work}/artifacts/" "${work}/corpus"
rc=$?
set -e
if [[ ${rc} -ne 0 ]]; then
    mkdir -p "${here}/crashes"
    cp "${work}/artifacts/"* "${here}/crashes/" 2>/dev/null || true
    echo "frame_fuzz failed (rc=${rc}); reproducers copied to ${here}/crashes/" >&2
fi
exit "${rc}"
