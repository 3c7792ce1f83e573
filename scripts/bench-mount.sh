#!/usr/bin/env bash
# Benchmark `vrepo mount` (issue 18): file-level restore and reads through the mount, against
# building the entry first and against restic.
#
# Builds (once, then reused) a VM working area: a 2 GiB monolithicSparse VMDK of an ext4 file
# system holding BENCH_DATA_MIB of real files from /usr and one 10 MiB file of random bytes
# (/restore/target.bin, the file a user wants back), a .vmx and an .nvram. It is saved into a
# vrepo repository as E1 (full), then BENCH_CHAIN-1 incremental saves, each after 4 MiB of
# random bytes written into the disk in place (qemu-io, in the free last quarter of the file
# system); restic backs up the last state.
# Then, in one run (each timing the median of BENCH_RUNS, a fresh mount for each):
#   first byte   `head -c 1` of every file of entries/E<BENCH_CHAIN>/, after the mount is up
#                (goal: each under 0.3 s)
#   one file     debugfs dump of /restore/target.bin out of guest/E<N>/bench.raw through the
#                mount, against `vrepo build E<N>` + `vmdk-parse cat` of the disk + the same
#                dump (goal: 20x faster), and against `restic restore latest --include` of the
#                VM folder + `vmdk-parse cat` + the same dump (goal: 10x faster); every
#                dumped file compared with the original
#   sequential   `cat` of entries/E<N>/bench.vmdk to /dev/null against `vrepo build E<N>`:
#                throughput ratio (goal: at least 60% of build's)
#   random 4 KiB reads of guest/E<N>/bench.raw: reads per second, cold (a fresh mount) and
#                warm (the same offsets again)
#   peak RSS     of the mount process over all of the above (goal: under 256 MiB)
# Files are read from the page cache by every contender (nothing is dropped).
#
# Usage: scripts/bench-mount.sh [--strict]
# Environment: BENCH_WORK [REPO/bench-work/mount], BENCH_DATA_MIB [1024], BENCH_CHAIN [50],
# BENCH_RUNS [3], BENCH_RANDOM_READS [2000].
# Exit codes: 0 done, 1 a restored file differs or a command failed, 2 usage or setup error,
# 3 a goal missed with --strict.
set -euo pipefail

readonly MIB=$((1024 * 1024))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_WORK:-$repo/bench-work/mount}
data_mib=${BENCH_DATA_MIB:-1024}
chain=${BENCH_CHAIN:-50}
runs=${BENCH_RUNS:-3}
nreads=${BENCH_RANDOM_READS:-2000}
# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
bench_args "$@"
for n in "$data_mib" "$chain" "$runs" "$nreads"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done

need mke2fs e2fsprogs
need debugfs e2fsprogs
need qemu-img qemu-utils
need qemu-io qemu-utils
need fusermount3 fuse3
need /usr/bin/time time
need python3 python3
need restic restic
[[ -e /dev/fuse ]] || die "FUSE is not available here (no /dev/fuse)"

mkdir -p "$work/bin" "$work/log"
work=$(cd "$work" && pwd)
log=$work/log
say "cargo build --release -p vrepo -p vmdk-parse"
(cd "$repo" && cargo build --release -p vrepo -p vmdk-parse --quiet) || die "cargo build failed"
for b in vrepo vmdk-parse; do
    cp "$repo/target/release/$b" "$work/bin/$b.tmp" && mv "$work/bin/$b.tmp" "$work/bin/$b"
done
vr=$work/bin/vrepo
vp=$work/bin/vmdk-parse
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache

# now: seconds since the epoch, with microseconds. since T: seconds since T.
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }'; }

stamp=$work/ready.stamp
want="data_mib=$data_mib chain=$chain writes=last-quarter"
wa=$work/wa
if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    say "reusing the working area and repositories in $work"
else
    rm -rf "$stamp" "$wa" "$work/vrepo" "$work/restic" "$work/staging" "$work/state.raw"
    say "staging ~$data_mib MiB of files from /usr and a 10 MiB file to restore"
    mkdir -p "$work/staging/restore"
    find /usr/bin /usr/share /usr/lib -xdev -type f -size -65536k -readable -printf '%s\t%p\0' |
        sort -z | python3 -c '
import sys
limit, total, out = int(sys.argv[1]) << 20, 0, []
for r in sys.stdin.buffer.read().split(b"\0"):
    if not r:
        continue
    s, p = r.split(b"\t", 1)
    if total + int(s) > limit:
        continue
    total += int(s)
    out.append(p.lstrip(b"/"))
sys.stdout.buffer.write(b"\0".join(out) + b"\0")' "$data_mib" |
        tar -C / --null --no-recursion -T - -cf - | tar -C "$work/staging" -xf -
    head -c $((10 * MIB)) /dev/urandom >"$work/staging/restore/target.bin"
    cp "$work/staging/restore/target.bin" "$work/target.bin"
    truncate -s 2G "$work/state.raw"
    mke2fs -q -F -t ext4 -d "$work/staging" "$work/state.raw"
    mkdir -p "$wa"
    qemu-img convert -f raw -O vmdk "$work/state.raw" "$wa/bench.vmdk"
    rm -rf "$work/staging" "$work/state.raw"
    printf '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "19"\ndisplayName = "bench"\nscsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "bench.vmdk"\nnvram = "bench.nvram"\n' >"$wa/bench.vmx"
    head -c 270336 /dev/urandom >"$wa/bench.nvram"
    "$vr" -r "$work/vrepo" init >/dev/null 2>&1
    say "E1 (full), then $((chain - 1)) incremental saves after 4 MiB written in place each"
    "$vr" -r "$work/vrepo" save -q "$wa" >/dev/null
    # The writes land in the last quarter of the disk: free space of the file system (mke2fs
    # fills from the start; with flex_bg its metadata is there too), so the guest stays
    # readable.
    for ((i = 2; i <= chain; i++)); do
        python3 - "$i" >"$work/writes.cmds" <<'PY'
import os, random, sys
random.seed(int(sys.argv[1]))
d = "/tmp/bench-mount-writes"
os.makedirs(d, exist_ok=True)
for k in range(16):
    off = random.randrange((3 << 29) // 65536, (2 << 30) // 65536 - 4) * 65536
    p = f"{d}/{k}"
    with open(p, "wb") as f:
        f.write(os.urandom(262144))
    print(f"write -q -s {p} {off} 262144")
PY
        qemu-io -f vmdk "$wa/bench.vmdk" <"$work/writes.cmds" >/dev/null
        "$vr" -r "$work/vrepo" save -q "$wa" >/dev/null
    done
    say "restic backup of the last state"
    restic -r "$work/restic" init -q >/dev/null
    restic -r "$work/restic" backup -q "$wa" >/dev/null
    echo "$want" >"$stamp"
fi
last=E$chain
R=$work/vrepo
mnt=$work/mnt
mkdir -p "$mnt"
fusermount3 -u -q "$mnt" 2>/dev/null || true

mount_pid=
rss_list=""
# start_mount: vrepo mount under /usr/bin/time (peak RSS), waiting until it is up.
start_mount() {
    /usr/bin/time -f '%M' -o "$work/mount.rss" "$vr" -r "$R" mount "$mnt" 2>>"$log/mount.err" &
    mount_pid=$!
    local t0
    t0=$(now)
    until [[ -d $mnt/entries ]]; do
        sleep 0.02
        awk -v t="$(since "$t0")" 'BEGIN { exit !(t < 30) }' || die "the mount did not come up (see $log/mount.err)"
    done
}
stop_mount() {
    pkill -TERM -P "$mount_pid" vrepo || true
    wait "$mount_pid" || true
    rss_list+=" $(tail -n1 "$work/mount.rss")"
}
trap 'fusermount3 -u -q "$mnt" 2>/dev/null || true' EXIT

# The reference file: dumped from the built entry's guest once (the in-place writes may have
# landed in it).
ref=$work/ref
rm -rf "$ref" && mkdir -p "$ref"
"$vr" -r "$R" build -q "$last" "$ref/wa" >/dev/null
"$vp" cat "$ref/wa/bench.vmdk" >"$ref/guest.raw"
debugfs -R "dump /restore/target.bin $ref/target.bin" "$ref/guest.raw" 2>/dev/null
[[ -s $ref/target.bin ]] || die "debugfs found no /restore/target.bin in the guest"
rm -rf "$ref/wa" "$ref/guest.raw"
files=$(cd "$work/wa" && echo *)

first=() mount_restore=() build_restore=() restic_restore=() seq_mount=() seq_build=()
cold=() warm=()
for ((run = 1; run <= runs; run++)); do
    say "run $run of $runs"
    # First byte of each file of the last entry.
    start_mount
    worst=0
    for f in $files; do
        t0=$(now)
        head -c 1 "$mnt/entries/$last/$f" >/dev/null
        t=$(since "$t0")
        worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
    done
    first+=("$worst")
    stop_mount

    # One file out of the guest: through the mount.
    start_mount
    rm -f "$work/out.bin"
    t0=$(now)
    debugfs -R "dump /restore/target.bin $work/out.bin" "$mnt/guest/$last/bench.raw" 2>/dev/null
    mount_restore+=("$(since "$t0")")
    cmp -s "$work/out.bin" "$ref/target.bin" || { say "the file restored through the mount differs"; exit 1; }
    stop_mount

    # The same by building the entry first.
    rm -rf "$work/built" "$work/out.bin" "$work/guest.raw"
    sync
    t0=$(now)
    "$vr" -r "$R" build -q "$last" "$work/built" >/dev/null
    "$vp" cat "$work/built/bench.vmdk" >"$work/guest.raw"
    debugfs -R "dump /restore/target.bin $work/out.bin" "$work/guest.raw" 2>/dev/null
    build_restore+=("$(since "$t0")")
    cmp -s "$work/out.bin" "$ref/target.bin" || { say "the file restored by build differs"; exit 1; }
    rm -rf "$work/guest.raw"

    # And with restic: restore the VM folder, then the same.
    rm -rf "$work/restored" "$work/out.bin"
    sync
    t0=$(now)
    restic -r "$work/restic" restore latest -q --target "$work/restored" --include "$wa" >/dev/null
    "$vp" cat "$work/restored$wa/bench.vmdk" >"$work/guest.raw"
    debugfs -R "dump /restore/target.bin $work/out.bin" "$work/guest.raw" 2>/dev/null
    restic_restore+=("$(since "$t0")")
    cmp -s "$work/out.bin" "$ref/target.bin" || { say "the file restored by restic differs"; exit 1; }
    rm -rf "$work/restored" "$work/guest.raw"

    # Sequential: the stored disk through the mount, against a build of the entry.
    start_mount
    t0=$(now)
    cat "$mnt/entries/$last/bench.vmdk" >/dev/null
    seq_mount+=("$(since "$t0")")
    stop_mount
    rm -rf "$work/built"
    sync
    t0=$(now)
    "$vr" -r "$R" build -q "$last" "$work/built" >/dev/null
    seq_build+=("$(since "$t0")")
    rm -rf "$work/built"

    # Random 4 KiB reads of the guest image: a fresh mount (cold), then the same offsets (warm).
    start_mount
    read -r c w < <(python3 - "$mnt/guest/$last/bench.raw" "$nreads" <<'PY'
import os, random, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
random.seed(7)
offs = [random.randrange(0, size // 4096) * 4096 for _ in range(n)]
rates = []
for _ in range(2):
    t0 = time.perf_counter()
    for o in offs:
        os.pread(fd, 4096, o)
    rates.append(n / (time.perf_counter() - t0))
print(f"{rates[0]:.0f} {rates[1]:.0f}")
PY
    )
    cold+=("$c")
    warm+=("$w")
    stop_mount
done

vmdk_bytes=$(stat -c %s "$wa/bench.vmdk")
m_first=$(maxof "${first[*]}")
m_mount=$(median "${mount_restore[*]}")
m_build=$(median "${build_restore[*]}")
m_restic=$(median "${restic_restore[*]}")
m_seqm=$(median "${seq_mount[*]}")
m_seqb=$(median "${seq_build[*]}")
peak_kib=$(maxof "$rss_list")

echo
echo "vrepo mount benchmark, $(date +%F) ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)), chain of $chain entries, disk $((vmdk_bytes / MIB)) MiB stored, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '  first byte of any file of %s (worst, max of %d runs)   %8.3f s\n' "$last" "$runs" "$m_first"
printf '  one 10 MiB file out of the guest: mount + debugfs       %8.3f s   (runs: %s)\n' "$m_mount" "${mount_restore[*]}"
printf '                                    build + cat + debugfs %8.3f s   (runs: %s)\n' "$m_build" "${build_restore[*]}"
printf '                        restic restore --include + debugfs %7.3f s   (runs: %s)\n' "$m_restic" "${restic_restore[*]}"
printf '  sequential read of the stored disk: cat through mount   %8.3f s, vrepo build %.3f s\n' "$m_seqm" "$m_seqb"
printf '  random 4 KiB reads of the guest image: cold %s/s, warm %s/s (medians)\n' "$(median "${cold[*]}")" "$(median "${warm[*]}")"
printf '  peak RSS of the mount: %d MiB\n' $((peak_kib / 1024))

missed=0
goal() { # goal OK TEXT
    if [[ $1 == 1 ]]; then echo "  ok    $2"; else echo "  MISS  $2"; missed=1; fi
}
echo "goals:"
goal "$(awk -v a="$m_first" 'BEGIN { print (a < 0.3) }')" "first byte within $m_first s (goal < 0.3 s)"
r1=$(ratio "$m_build" "$m_mount")
goal "$(awk -v r="$r1" 'BEGIN { print (r >= 20) }')" "one-file restore ${r1}x faster than build + dump (goal >= 20)"
r2=$(ratio "$m_restic" "$m_mount")
goal "$(awk -v r="$r2" 'BEGIN { print (r >= 10) }')" "one-file restore ${r2}x faster than restic restore + dump (goal >= 10)"
r3=$(ratio "$m_seqb" "$m_seqm")
goal "$(awk -v r="$r3" 'BEGIN { print (r >= 0.6) }')" "sequential read at ${r3}x build's throughput (goal >= 0.6)"
goal "$((peak_kib < 256 * 1024))" "mount peak RSS $((peak_kib / 1024)) MiB (goal < 256)"
if ((missed && strict)); then
    exit 3
fi
