#!/usr/bin/env bash
# Benchmark the VMDK writer: `vmdk-parse convert -O streamOptimized` against
# `qemu-img convert -O vmdk -o subformat=streamOptimized` on the benchmark's raw image (an ext4
# file system of 4 GiB holding 1 GiB of files, built by scripts/bench-vmdk-parse.sh into
# bench-work/disk.raw). Runs are interleaved; the median wall time, CPU time (user + sys) and
# peak RSS of each are printed with the ratio. Our output is checked with `qemu-img check` and
# `qemu-img compare` against the source.
#
# Environment:
#   BENCH_WORK   folder with disk.raw and room for two outputs [bench-work]
#   BENCH_RUNS   timed runs per contender [3]
set -euo pipefail
cd "$(dirname "$0")/.."

work=${BENCH_WORK:-bench-work}
runs=${BENCH_RUNS:-3}
raw=$work/disk.raw
[[ -f $raw ]] || { echo "bench-vmdk-write: $raw missing; run scripts/bench-vmdk-parse.sh first" >&2; exit 2; }
for t in qemu-img /usr/bin/time; do
    command -v "$t" >/dev/null || { echo "bench-vmdk-write: $t is needed" >&2; exit 2; }
done
cargo build --quiet --release -p vmdk-parse
vp=target/release/vmdk-parse
ours=$work/write-ours.vmdk
theirs=$work/write-qemu.vmdk
cat "$raw" >/dev/null # warm the page cache for both

declare -A wall cpu rss
timed() { # timed KEY CMD...: append wall s, cpu s, peak KiB
    local key=$1 out
    shift
    /usr/bin/time -o "$work/write-time.txt" -f '%e %U %S %M' "$@" >/dev/null
    out=$(tail -1 "$work/write-time.txt")
    read -r w u s m <<<"$out"
    wall[$key]+="$w "
    cpu[$key]+="$(echo "$u + $s" | bc) "
    rss[$key]+="$m "
}
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

for ((i = 1; i <= runs; i++)); do
    echo "run $i/$runs" >&2
    rm -f "$ours" "$theirs" "$work/write-time.txt"
    timed ours "$vp" convert "$raw" -O streamOptimized -o "$ours"
    timed qemu qemu-img convert -O vmdk -o subformat=streamOptimized "$raw" "$theirs"
done
qemu-img check "$ours" >/dev/null
qemu-img compare "$raw" "$ours" >/dev/null
echo "streamOptimized from $(($(stat -c %s "$raw") >> 20)) MiB raw ($(nproc) cores), median of $runs interleaved runs"
printf '%-34s %8s %8s %9s %10s\n' tool "wall s" "cpu s" "RSS MiB" "out MiB"
for key in ours qemu; do
    case $key in
    ours) name="vmdk-parse convert"; f=$ours ;;
    qemu) name="qemu-img convert"; f=$theirs ;;
    esac
    printf '%-34s %8s %8s %9s %10s\n' "$name" "$(median "${wall[$key]}")" "$(median "${cpu[$key]}")" \
        "$(($(maxof "${rss[$key]}") / 1024))" "$(($(stat -c %s "$f") >> 20))"
done
echo "vmdk-parse is $(echo "scale=2; $(median "${wall[qemu]}") / $(median "${wall[ours]}")" | bc)x faster (output checked by qemu-img check and compare)"
rm -f "$ours" "$theirs" "$work/write-time.txt"
