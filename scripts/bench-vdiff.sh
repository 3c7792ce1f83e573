#!/usr/bin/env bash
# Benchmark vdiff/vpatch against xdelta3 and rdiff on a realistic pair of disk states.
#
# Builds (once, then reused) an ext4 file system holding real files copied from /usr (state 0),
# then evolves a copy of it in place with `debugfs -w` (state 1): new files written, files
# deleted, files rewritten with changed contents. Both states are kept raw and as
# monolithicSparse VMDKs. Then times, one after the other:
#   vdiff RAW0 RAW1 -o D                 (ours, raw inputs)
#   vdiff VMDK0 VMDK1 -o D               (ours, VMDK inputs)
#   xdelta3 -e -s RAW0 RAW1 D            (default settings)
#                                        (these three interleaved, BENCH_DIFF_RUNS rounds, medians)
#   xdelta3 -e -B WIN -s RAW0 RAW1 D     (source window as large as the image, capped at 2 GiB)
#   rdiff signature RAW0 S; rdiff delta S RAW1 D
#   qemu-img compare RAW1 VMDK1          (the read-speed reference: the same disk twice, so it
#                                         reads both to the end; RAW0 vs RAW1 stops early)
#   vpatch RAW0 D -o OUT (base digest checked on the way), the same with D made with
#   `vdiff --index` (read through its trailing index), vpatch --trust-base (no base digest),
#   and xdelta3 -d -s RAW0 D OUT: interleaved, BENCH_PATCH_RUNS rounds, medians, each run
#   after a `sync` so that writeback of the previous output is not billed to the next;
#   rdiff patch RAW0 D OUT
# Every patched output is compared with state 1 byte for byte: a fast wrong answer fails.
# Prints sizes, times, peak memory and the ratios the issue sets as goals.
#
# Usage: scripts/bench-vdiff.sh [--strict]
#   --strict   exit 3 when a goal is missed (default: report it, exit 0)
#
# Environment (default in brackets):
#   BENCH_WORK       work folder; images are kept there and reused [REPO/bench-work/vdiff]
#   BENCH_DATA_MIB   MiB of files copied from /usr into the file system [1024]
#   BENCH_DISK_GIB   size of the ext4 file system, GiB [4]
#   BENCH_CHURN_PCT  percent of the data written anew, and of files deleted/rewritten [10]
#   BENCH_SKIP_XDELTA_BIG  set to 1 to skip the large-window xdelta3 run (slow, memory-hungry) [0]
#   BENCH_PATCH_RUNS rounds of the interleaved patch runs (medians reported) [3]
#   BENCH_DIFF_RUNS  rounds of the interleaved vdiff (raw, VMDK) and xdelta3 -e runs (medians) [3]
#
# Exit codes: 0 done, 1 an output differs or a command failed, 2 usage or setup error,
# 3 a goal missed with --strict.
set -euo pipefail

readonly MIB=$((1024 * 1024))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_WORK:-$repo/bench-work/vdiff}
data_mib=${BENCH_DATA_MIB:-1024}
disk_gib=${BENCH_DISK_GIB:-4}
churn=${BENCH_CHURN_PCT:-10}
skip_big=${BENCH_SKIP_XDELTA_BIG:-0}
patch_runs=${BENCH_PATCH_RUNS:-3}
diff_runs=${BENCH_DIFF_RUNS:-3}
# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
bench_args "$@"
for n in "$data_mib" "$disk_gib" "$churn" "$patch_runs" "$diff_runs"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done

need mke2fs e2fsprogs
need debugfs e2fsprogs
need xdelta3 xdelta3
need rdiff rdiff
need /usr/bin/time time
need qemu-img qemu-utils
need cmp diffutils
command -v cargo >/dev/null || die "cargo is missing (install Rust: https://rustup.rs)"

mkdir -p "$work/out" "$work/bin"
work=$(cd "$work" && pwd)
out=$work/out
say "cargo build --release -p vdiff -p vpatch"
(cd "$repo" && cargo build --release -p vdiff -p vpatch --quiet) || die "cargo build failed"
# Private copies: other builds sharing target/ must not swap a binary in the middle of a run.
for b in vdiff vpatch; do cp "$repo/target/release/$b" "$work/bin/$b.tmp" && mv "$work/bin/$b.tmp" "$work/bin/$b"; done
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)

# --- Images ------------------------------------------------------------------------------------

raw0=$work/state0.raw
raw1=$work/state1.raw
vmdk0=$work/state0.vmdk
vmdk1=$work/state1.vmdk
stamp=$work/images.stamp
want_stamp="data_mib=$data_mib disk_gib=$disk_gib churn=$churn"

# stage DEST SKIP_MIB LIMIT_MIB: copy LIMIT_MIB of regular files from /usr into DEST, after
# skipping the first SKIP_MIB (so two calls give disjoint sets of real files).
stage() {
    local dest=$1 skip=$(($2 * MIB)) limit=$(($3 * MIB)) seen=0 total=0 size path
    rm -rf "$dest"
    mkdir -p "$dest"
    find /usr/bin /usr/share /usr/lib -xdev -type f -size -65536k -readable -printf '%s\t%p\0' |
        sort -z |
        while IFS=$'\t' read -r -d '' size path; do
            seen=$((seen + size))
            ((seen > skip)) || continue
            ((total + size <= limit)) || continue
            total=$((total + size))
            printf '%s\0' "${path#/}"
        done |
        tar -C / --null --no-recursion -T - -cf - | tar -C "$dest" -xf -
}

if [[ -f $stamp && $(<"$stamp") == "$want_stamp" && -f $raw0 && -f $raw1 && -f $vmdk0 && -f $vmdk1 ]]; then
    say "reusing images in $work ($want_stamp)"
else
    rm -f "$stamp" "$raw0" "$raw1" "$vmdk0" "$vmdk1"
    new_mib=$((data_mib * churn / 100))
    say "staging ~$data_mib MiB of files from /usr, and ~$new_mib MiB of other files"
    stage "$work/staging" 0 "$data_mib"
    stage "$work/new" "$data_mib" "$new_mib"
    say "mke2fs -t ext4 -d staging: ${disk_gib} GiB raw image (state 0)"
    truncate -s "${disk_gib}G" "$raw0.tmp"
    mke2fs -q -F -t ext4 -L vmlbench -d "$work/staging" "$raw0.tmp"
    mv "$raw0.tmp" "$raw0"
    say "state 1: debugfs -w (write new files, delete and rewrite $churn% of the files)"
    cp --sparse=always "$raw0" "$raw1.tmp"
    cmds=$work/debugfs.cmds
    : >"$cmds"
    # debugfs writes into its current directory; names with blanks or quotes are left alone.
    printf 'mkdir /new\ncd /new\n' >>"$cmds"
    i=0
    while IFS= read -r -d '' f; do
        [[ $f == *[[:space:]\"]* ]] && continue
        i=$((i + 1))
        echo "write \"$f\" f$i" >>"$cmds"
    done < <(find "$work/new" -type f -print0 | sort -z)
    # Every (100/churn)th file of state 0: odd ones deleted, even ones rewritten with a
    # changed head (a header line) and the rest shifted by it.
    step=$((100 / churn))
    j=0
    while IFS= read -r -d '' f; do
        j=$((j + 1))
        ((j % step == 0)) || continue
        [[ $f == *[[:space:]\"]* ]] && continue
        rel=${f#"$work/staging"}
        dir=${rel%/*}
        echo "cd \"${dir:-/}\"" >>"$cmds"
        if (((j / step) % 2)); then
            echo "rm \"${rel##*/}\"" >>"$cmds"
        else
            mod=$work/mod/$j
            mkdir -p "$work/mod"
            { printf 'rewritten by bench-vdiff %d\n' "$j"; cat "$f"; } >"$mod"
            echo "rm \"${rel##*/}\"" >>"$cmds"
            echo "write \"$mod\" \"${rel##*/}\"" >>"$cmds"
        fi
    done < <(find "$work/staging" -type f -print0 | sort -z)
    debugfs -w -f "$cmds" "$raw1.tmp" >/dev/null 2>"$work/debugfs.log" || die "debugfs failed (see $work/debugfs.log)"
    mv "$raw1.tmp" "$raw1"
    say "qemu-img convert -O vmdk (monolithicSparse), both states"
    qemu-img convert -f raw -O vmdk "$raw0" "$vmdk0"
    qemu-img convert -f raw -O vmdk "$raw1" "$vmdk1"
    rm -rf "$work/staging" "$work/new" "$work/mod"
    echo "$want_stamp" >"$stamp"
fi
size=$(stat -c %s "$raw0")

# --- Timing ------------------------------------------------------------------------------------

# timed NAME COMMAND...: run under /usr/bin/time -v; records wall (s), peak RSS (KiB), CPU (s).
declare -A wall rss cpu runs
timed() {
    local name=$1 tv=$work/time.txt status=0
    shift
    /usr/bin/time -v -o "$tv" -- "$@" >/dev/null 2>"$work/$name.err" || status=$?
    read -r "wall[$name]" "rss[$name]" "cpu[$name]" < <(awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, a, ":"); s = 0
                                   for (i = 1; i <= n; i++) s = s * 60 + a[i]; wall = s }
        /User time/ { c += $2 } /System time/ { c += $2 }
        /Maximum resident set size/ { r = $2 }
        END { printf "%.2f %d %.2f\n", wall, r, c }' "$tv")
    t_status=$status
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wrong=0
check_out() { # check_out NAME FILE: the patched output must equal state 1
    if ! cmp -s "$2" "$raw1"; then
        say "WRONG: $1 output differs from state 1"
        wrong=1
    fi
    rm -f "$2"
}
# Inputs read once so every contender reads them from the page cache.
cat "$raw0" "$raw1" "$vmdk0" "$vmdk1" >/dev/null

v=$work/bin/vdiff
p=$work/bin/vpatch
rm -f "$out"/*
# The goal's pair (vdiff raw, VMDK, and xdelta3 -e with default settings): interleaved,
# BENCH_DIFF_RUNS rounds, medians (a single run of a 1-2 s command is mostly noise here).
for ((r = 1; r <= diff_runs; r++)); do
    say "diff round $r of $diff_runs: vdiff (raw), vdiff (VMDK), xdelta3 -e (default)"
    timed "vdiff_$r" "$v" "$raw0" "$raw1" -o "$out/d.vdiff"
    ((t_status == 0)) || die "vdiff failed: $(cat "$work/vdiff_$r.err")"
    timed "vdiff_vmdk_$r" "$v" "$vmdk0" "$vmdk1" -o "$out/d2.vdiff"
    ((t_status == 0)) || die "vdiff on VMDK failed: $(cat "$work/vdiff_vmdk_$r.err")"
    timed "xdelta_$r" "xdelta3" -e -f -s "$raw0" "$raw1" "$out/d.xd"
    ((t_status == 0)) || die "xdelta3 failed: $(cat "$work/xdelta_$r.err")"
done
for n in vdiff vdiff_vmdk xdelta; do
    ws="" cs="" rs=""
    for ((r = 1; r <= diff_runs; r++)); do
        ws+=" ${wall[${n}_$r]}" cs+=" ${cpu[${n}_$r]}" rs+=" ${rss[${n}_$r]}"
    done
    wall[$n]=$(median "$ws") cpu[$n]=$(median "$cs") rss[$n]=$(maxof "$rs") runs[$n]=$ws
done
say "vdiff --stat"
"$v" --stat "$raw0" "$raw1" >"$work/stat.json"
win=$((size < 2147483648 ? size : 2147483648))
if [[ $skip_big != 1 ]]; then
    say "xdelta3 -e -B $win"
    timed xdelta_big "xdelta3" -e -f -B "$win" -s "$raw0" "$raw1" "$out/d-big.xd"
    ((t_status == 0)) || die "xdelta3 -B failed: $(cat "$work/xdelta_big.err")"
fi
say "rdiff signature + delta"
timed rdiff_sig rdiff signature "$raw0" "$out/sig"
timed rdiff_delta rdiff delta "$out/sig" "$raw1" "$out/d.rdiff"
((t_status == 0)) || die "rdiff failed: $(cat "$work/rdiff_delta.err")"
say "qemu-img compare (read-speed reference)"
timed qemu_compare qemu-img compare -f raw -F vmdk "$raw1" "$vmdk1"
"$v" --index "$raw0" "$raw1" -o "$out/di.vdiff" || die "vdiff --index failed"
# patch_run NAME ROUND CMD...: one timed run after a sync, its output checked.
patch_run() {
    local name=$1 round=$2
    shift 2
    sync
    timed "${name}_$round" "$@"
    ((t_status == 0)) || die "$name failed: $(cat "$work/${name}_$round.err")"
    check_out "$name" "$out/o.raw"
}
for ((r = 1; r <= patch_runs; r++)); do
    say "patch round $r of $patch_runs: vpatch, vpatch (indexed delta), vpatch --trust-base, xdelta3 -d"
    patch_run vpatch "$r" "$p" "$raw0" "$out/d.vdiff" -o "$out/o.raw"
    patch_run vpatch_index "$r" "$p" "$raw0" "$out/di.vdiff" -o "$out/o.raw"
    patch_run vpatch_trust "$r" "$p" --trust-base "$raw0" "$out/d.vdiff" -o "$out/o.raw"
    patch_run xdelta_d "$r" xdelta3 -d -f -s "$raw0" "$out/d.xd" "$out/o.raw"
done
for n in vpatch vpatch_index vpatch_trust xdelta_d; do
    ws="" cs="" rs=""
    for ((r = 1; r <= patch_runs; r++)); do
        ws+=" ${wall[${n}_$r]}" cs+=" ${cpu[${n}_$r]}" rs+=" ${rss[${n}_$r]}"
    done
    wall[$n]=$(median "$ws") cpu[$n]=$(median "$cs") rss[$n]=$(maxof "$rs")
done
say "rdiff patch"
timed rdiff_patch rdiff patch "$raw0" "$out/d.rdiff" "$out/o.raw"
check_out "rdiff patch" "$out/o.raw"

# --- Report ------------------------------------------------------------------------------------

sz() { stat -c %s "$1"; }
s_v=$(sz "$out/d.vdiff")
s_v2=$(sz "$out/d2.vdiff")
s_x=$(sz "$out/d.xd")
s_xb=$([[ -f $out/d-big.xd ]] && sz "$out/d-big.xd" || echo 0)
s_r=$(sz "$out/d.rdiff")
rdiff_t=$(awk -v a="${wall[rdiff_sig]}" -v b="${wall[rdiff_delta]}" 'BEGIN { printf "%.2f", a + b }')
x_best=$s_x
((s_xb > 0 && s_xb < x_best)) && x_best=$s_xb

printf '\nvdiff benchmark, %s (%s), image %s GiB, data %s MiB, churn %s%%\n' "$(date -u +%F)" "$rev" "$disk_gib" "$data_mib" "$churn"
printf '%-28s %10s %10s %10s %12s\n' "command" "wall s" "cpu s" "RSS MiB" "delta MiB"
row() { printf '%-28s %10s %10s %10s %12s\n' "$1" "${wall[$2]}" "${cpu[$2]}" "$(mib $((${rss[$2]} * 1024)))" "$3"; }
row "vdiff raw" vdiff "$(mib "$s_v")"
row "vdiff vmdk" vdiff_vmdk "$(mib "$s_v2")"
row "xdelta3 -e" xdelta "$(mib "$s_x")"
[[ -n ${wall[xdelta_big]:-} ]] && row "xdelta3 -e -B $(mib "$win")M" xdelta_big "$(mib "$s_xb")"
row "rdiff signature" rdiff_sig ""
row "rdiff delta" rdiff_delta "$(mib "$s_r")"
row "qemu-img compare" qemu_compare ""
row "vpatch" vpatch ""
row "vpatch, indexed delta" vpatch_index ""
row "vpatch --trust-base" vpatch_trust ""
row "xdelta3 -d" xdelta_d ""
row "rdiff patch" rdiff_patch ""
printf 'each diff round, wall s: vdiff raw%s; vdiff vmdk%s; xdelta3 -e%s\n' "${runs[vdiff]}" "${runs[vdiff_vmdk]}" "${runs[xdelta]}"
printf '\n--stat: %s\n' "$(tr -d '\n ' <"$work/stat.json")"

missed=0
goal() { # goal TEXT OK
    if [[ $2 == 1 ]]; then printf '  ok    %s\n' "$1"; else
        printf '  MISS  %s\n' "$1"
        missed=1
    fi
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }' && echo 1 || echo 0; }
# at_least A F B: A >= F * B, on the measured values (not on ratios rounded for printing).
at_least() { awk -v a="$1" -v f="$2" -v b="$3" 'BEGIN { exit !(a >= f * b) }' && echo 1 || echo 0; }
printf '\ngoals:\n'
goal "vdiff $(ratio "${wall[xdelta]}" "${wall[vdiff]}")x faster than xdelta3 -e (goal 20x)" "$(at_least "${wall[xdelta]}" 20 "${wall[vdiff]}")"
goal "delta $(ratio "$s_v" "$s_x")x xdelta3's default output (goal <= 1)" "$(at_least "$s_x" 1 "$s_v")"
goal "delta $(ratio "$s_v" "$x_best")x xdelta3's best (goal <= 2)" "$(at_least "$x_best" 0.5 "$s_v")"
goal "delta $(ratio "$s_v" "$s_r")x rdiff's (goal <= 0.2)" "$(at_least "$s_r" 5 "$s_v")"
goal "vpatch $(ratio "${wall[xdelta_d]}" "${wall[vpatch]}")x faster than xdelta3 -d (goal 5x)" "$(at_least "${wall[xdelta_d]}" 5 "${wall[vpatch]}")"
goal "vdiff peak RSS $(mib $((rss[vdiff] * 1024))) MiB (goal < 256 for a 4 GiB pair)" "$(ge 262144 "${rss[vdiff]}")"
printf '  info  vpatch --trust-base %sx faster than xdelta3 -d\n' "$(ratio "${wall[xdelta_d]}" "${wall[vpatch_trust]}")"
printf '  info  vpatch on the indexed delta %sx faster than xdelta3 -d\n' "$(ratio "${wall[xdelta_d]}" "${wall[vpatch_index]}")"
printf '  info  vdiff %s x qemu-img compare time; %s x rdiff signature+delta time\n' \
    "$(ratio "${wall[vdiff]}" "${wall[qemu_compare]}")" "$(ratio "$rdiff_t" "${wall[vdiff]}")"

((wrong == 0)) || exit 1
((strict == 1 && missed == 1)) && exit 3
exit 0
