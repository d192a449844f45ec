#!/usr/bin/env bash
# Build every libFuzzer target of the C core with ASan+UBSan and run each for
# SECONDS (default 20).  Usage: bash fuzz/run.sh [seconds]
# Crashes and the growing corpora land in fuzz/out/ (not committed).
set -euo pipefail
SECS="${1:-20}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
SRC="$ROOT/_tarsum"
OUT="$HERE/out"
CC="${CC:-$(command -v clang || command -v clang-14 || true)}"
if [ -z "$CC" ]; then
    echo "fuzz: clang with libFuzzer is needed (apt-get install -y clang libclang-rt-14-dev)" >&2
    exit 2
fi
mkdir -p "$OUT"
CFLAGS=(-g -O1 -std=c99 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -fno-omit-frame-pointer -I"$SRC" -include stdint.h -include stddef.h)
CORE=("$SRC/rh_sha256.c" "$SRC/rh_sha256_shani.c" "$SRC/rh_tarsum.c")
TARGETS=(fuzz_sha256_unmarshal fuzz_tarsum_import fuzz_tarsum_feed fuzz_tarsum_sort)
for t in "${TARGETS[@]}"; do
    "$CC" "${CFLAGS[@]}" "$HERE/$t.c" "${CORE[@]}" -o "$OUT/$t"
done
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$OUT/corpus-$t"
    seeds=()
    [ -d "$HERE/seeds/$t" ] && seeds=("$HERE/seeds/$t")
    echo "== $t (${SECS}s)"
    if ! (cd "$OUT" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
            "./$t" -max_total_time="$SECS" -max_len=8192 -print_final_stats=1 \
            "corpus-$t" "${seeds[@]}" 2>&1 | grep -E "stat::number_of_executed_units|ERROR|SUMMARY|crash-|Done" ); then
        :
    fi
    if ls "$OUT"/crash-* "$OUT"/leak-* "$OUT"/timeout-* >/dev/null 2>&1; then status=1; fi
done
exit $status
