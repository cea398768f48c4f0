#!/usr/bin/env bash
# Builds and runs every fuzz target: the tunnel frame fuzzer and the user-space TCP/IP fuzzer
# (frames into a net::stack) for SECONDS (default 30) each, and the
# CONFIG body and etcd record fuzzers for a quarter of that, each on a copy of its seed corpus.
# Exits non-zero if libFuzzer finds a crash, leak, sanitizer report or timeout.
set -euo pipefail
seconds="${1:-30}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# fuzz NAME SECONDS SOURCES...
fuzz() {
    local name="$1" secs="$2"
    shift 2
    clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -I"${root}" "$@" -o "${work}/${name}_fuzz" -lpthread
    cp -r "${here}/corpus/${name}" "${work}/corpus_${name}"
    mkdir -p "${work}/artifacts_${name}"
    set +e
    "${work}/${name}_fuzz" -max_total_time="${secs}" -print_final_stats=1 \
        -artifact_prefix="${work}/artifacts_${name}/" "${work}/corpus_${name}"
    local rc=$?
    set -e
    if [[ ${rc} -ne 0 ]]; then
        mkdir -p "${here}/crashes"
        cp "${work}/artifacts_${name}/"* "${here}/crashes/" 2>/dev/null || true
        echo "${name}_fuzz failed (rc=${rc}); reproducers copied to ${here}/crashes/" >&2
        exit "${rc}"
    fi
}

fuzz frame "${seconds}" "${here}/frame_fuzz.cc" "${root}/dataplane/tunnel/frame.cc" \
    "${root}/dataplane/tunnel/mux.cc" "${root}/dataplane/base/log.cc"
fuzz config "$(( seconds / 4 > 5 ? seconds / 4 : 5 ))" "${here}/config_fuzz.cc" \
    "${root}/dataplane/tunnel/connector_config.cc"
fuzz etcd "$(( seconds / 4 > 5 ? seconds / 4 : 5 ))" "${here}/etcd_records_fuzz.cc" \
    "${root}"/control/store/etcd/records.cc "${root}"/control/store/{rules,pem_util,model}.cc \
    "${root}"/tls/ca.cc "${root}"/tls/detail/ossl.cc "${root}"/dataplane/base/log.cc -lssl -lcrypto
fuzz net "${seconds}" "${here}/net_fuzz.cc" \
    "${root}"/dataplane/net/{arp,checksum,icmp,ipv4,stack,syn_cookie,tcp_input,tcp_output,tcp_wire}.cc
