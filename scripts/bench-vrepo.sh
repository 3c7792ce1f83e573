#!/usr/bin/env bash
# Benchmark vrepo save/build against restic and borg on a realistic VM working area.
#
# Builds (once, then reused) a VM working area: a monolithicSparse VMDK of an ext4 file system
# holding real files copied from /usr, a small .vmx and a .nvram of random bytes, in three
# states. States 1 and 2 evolve the file system with `debugfs -w` (new files written, files
# deleted, files rewritten with a changed head) and write the result INTO THE SAME VMDK FILE IN
# PLACE, as VMware changes a running disk: the raw states N-1 and N are compared in 64 KiB
# blocks (the grain size) and only the changed runs are written with
# `qemu-io -f vmdk FILE` commands `write -s DATA OFF LEN` (DATA holds the run's new bytes), so
# unchanged grains keep their file offsets, new grains are appended and the header CID changes.
# (`qemu-img convert -n -O vmdk RAW FILE` onto the existing file is no good: it writes every
# grain, zeros included, so the file grows to the disk's full virtual size.) Each state is kept
# as a reference folder (wa0, wa1, wa2).
#
# Then, in one run, the working area (one folder, same path throughout) takes states 0, 1 and 2
# in turn (the changed files copied in and touched), and each state is saved by
#   vrepo -r R save WORKAREA         (first full, then incremental: vrepo's default)
#   restic -r R backup WORKAREA      (defaults: repository v2, compression auto; RESTIC_PASSWORD)
#   borg create R::sN workarea       (defaults: lz4 compression; repo made with --encryption none)
# The second save (state 1, the incremental save of the goal) is then timed BENCH_RUNS-1 times
# more for vrepo and restic, each on a copy of its repository as state 0 left it (restic's cache
# too), alternating, and the median is reported (borg's stays one run: it refuses a repository
# older than its cache has seen).
# and the newest state is built into an empty folder, 3 times interleaved (median), by
#   vrepo -r R build latest DIR, restic restore latest --target DIR, borg extract R::s2,
#   vrepo build of a full entry of the newest state (saved --full into another repository; info)
#   cp -a WORKAREA/. DIR             (the physical limit; its writes may stay in the page cache)
#   cp -a WORKAREA/. DIR; sync DIR/* (the same, on stable storage: vrepo build writes disks with
#                                     O_DIRECT, so it pays for the device writes; info only)
# Every restored folder must hold exactly the working area's files, byte for byte: a fast wrong
# answer fails. Repository sizes are `du -sb` after the three states.
# Last, a chain: another vrepo repository gets BENCH_CHAIN entries (E1 full, then incremental
# saves, each after BENCH_CHAIN_KIB of random bytes written in place into the disk at random
# offsets: half in grain-aligned runs of 64-512 KiB, half in scattered 4 KiB writes, about half
# of them into unallocated grains). The final state is also saved --full into a repository of its
# own, and building entry BENCH_CHAIN is timed against building that full entry (3 times
# interleaved, median), both checked byte for byte.
# Then the rewrites (issue 6; skipped with BENCH_SKIP_REWRITE=1, or run alone with
# BENCH_ONLY_REWRITE=1), each on a `cp -a` copy so every run starts from the same repository:
#   consolidate   `vrepo consolidate --full E<BENCH_CHAIN>` of the chain's copy, timed once.
#   prune         `vrepo prune --keep-last N/2` of a copy of a repository of N = BENCH_PRUNE_ENTRIES
#                 entries made like the chain (E1 full, then incremental saves after the same
#                 random in-place writes); the entries it rewrites (kept entries whose parent is
#                 removed) are read from `prune --dry-run`'s plan. Timed once.
#   The reference for both, "reading the bytes it must rewrite once": for each rewritten entry,
#   `vrepo build ENTRY` into an empty folder (reads every stored byte the entry needs once and
#   writes its volume's files) plus `cat` of the built files to /dev/null (after `sync`; build
#   writes disks with O_DIRECT, so this may read the device), both from the copy before the
#   rewrite. Goal: rewrite time / (build + cat time) <= 1. For information: the time to `cat` the
#   stored deltas of the entry's chain (`vrepo deps`), and `vrepo save --full` of the built folder
#   into a scratch repository (what rebuilding the entry by hand would cost on top of the build).
#   Correctness: the rewritten entries, one entry in the middle and the last entry are built
#   before and after the rewrite, and must give the same files, byte for byte.
#   verify        `vrepo verify --read-data` of the three-state repository against
#                 `restic check --read-data` of restic's (BENCH_RUNS times interleaved, medians);
#                 goal: vrepo at least 3x faster. `vrepo verify` (structure only) and `restic
#                 check` (no data) once each, for information.
# With BENCH_ONLY_REWRITE=1 the saves, builds and chain timings are skipped: the three-state vrepo
# and restic repositories, the chain and the prune repository are reused when present and
# complete (vrepo's has exactly E3, restic's 3 snapshots, the chain exactly E<BENCH_CHAIN>, the
# prune repository exactly E<BENCH_PRUNE_ENTRIES>; their contents are not compared with the
# settings), else made again. A normal run makes them all anew.
# Wall seconds and peak RSS come from /usr/bin/time; nothing is dropped from the page cache (the
# inputs are read from it by every contender), and `sync` runs before each timed build. The load
# (`uptime`) is printed with the figures.
#
# Usage: scripts/bench-vrepo.sh [--strict]
#        scripts/bench-vrepo.sh --s3 [--strict]   the S3 mode: scripts/bench-s3.sh (it reuses
#                                                  this script's working-area states)
#   --strict   exit 3 when a goal is missed (default: report it, exit 0)
#
# Environment (default in brackets):
#   BENCH_WORK       work folder; the working-area states are kept there and reused
#                    [REPO/bench-work/vrepo]
#   BENCH_DATA_MIB   MiB of files copied from /usr into the file system [1024]
#   BENCH_FILES      the folders those files come from, blank-separated
#                    [/usr/bin /usr/share /usr/lib]; the second workload of the README, system
#                    files: "/usr/lib/x86_64-linux-gnu /usr/lib/llvm-14 /usr/lib/gcc /usr/share"
#   BENCH_DISK_GIB   size of the ext4 file system (the disk's virtual size), GiB [2]
#   BENCH_CHURN_PCT  per state: percent of the data written anew, and of files deleted or
#                    rewritten (1-50) [5]
#   BENCH_CHAIN      entries in the chain [50]
#   BENCH_CHAIN_KIB  KiB written into the disk before each chain save [4096]
#   BENCH_RUNS       timed repetitions of each build and of the second save [3]
#   BENCH_SKIP_VREPO set to 1 to run only restic, borg and cp (vrepo not built) [0]
#   BENCH_SKIP_REWRITE  set to 1 to skip the rewrites and verify part [0]
#   BENCH_ONLY_REWRITE  set to 1 to run only the rewrites and verify part [0]
#   BENCH_PRUNE_ENTRIES entries of the repository pruned to its newest half (at least 2) [100]
#   BENCH_ONLY_STATES   set to 1 to only make (or check) the working-area states, and stop [0]
#
# Exit codes: 0 done, 1 a restored working area differs or a command failed, 2 usage or setup
# error, 3 a goal missed with --strict.
set -euo pipefail

readonly MIB=$((1024 * 1024))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_WORK:-$repo/bench-work/vrepo}
data_mib=${BENCH_DATA_MIB:-1024}
read -r -a files <<<"${BENCH_FILES:-/usr/bin /usr/share /usr/lib}"
disk_gib=${BENCH_DISK_GIB:-2}
churn=${BENCH_CHURN_PCT:-5}
chain=${BENCH_CHAIN:-50}
chain_kib=${BENCH_CHAIN_KIB:-4096}
runs=${BENCH_RUNS:-3}
skip_vrepo=${BENCH_SKIP_VREPO:-0}
skip_rewrite=${BENCH_SKIP_REWRITE:-0}
only_rewrite=${BENCH_ONLY_REWRITE:-0}
prune_n=${BENCH_PRUNE_ENTRIES:-100}
# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
if [[ ${1:-} == --s3 ]]; then
    shift
    exec "$repo/scripts/bench-s3.sh" "$@"
fi
bench_args "$@"
for n in "$data_mib" "$disk_gib" "$churn" "$chain" "$chain_kib" "$runs" "$prune_n"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done
((churn <= 50)) || die "BENCH_CHURN_PCT must be at most 50, got $churn"
((chain >= 2)) || die "BENCH_CHAIN must be at least 2, got $chain"
((prune_n >= 2)) || die "BENCH_PRUNE_ENTRIES must be at least 2, got $prune_n"
if [[ $only_rewrite == 1 ]]; then
    [[ $skip_vrepo != 1 ]] || die "BENCH_ONLY_REWRITE=1 needs vrepo (BENCH_SKIP_VREPO=1 given)"
    [[ $skip_rewrite != 1 ]] || die "BENCH_ONLY_REWRITE=1 and BENCH_SKIP_REWRITE=1 leave nothing to do"
fi

need mke2fs e2fsprogs
need debugfs e2fsprogs
need qemu-img qemu-utils
need qemu-io qemu-utils
need /usr/bin/time time
need cmp diffutils
need python3 python3
need restic restic
[[ $only_rewrite == 1 ]] || need borg borgbackup

mkdir -p "$work/bin" "$work/log"
work=$(cd "$work" && pwd)
log=$work/log
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
vr=$work/bin/vrepo
if [[ $skip_vrepo != 1 ]]; then
    command -v cargo >/dev/null || die "cargo is missing (install Rust: https://rustup.rs)"
    say "cargo build --release -p vrepo"
    (cd "$repo" && cargo build --release -p vrepo --quiet) || die "cargo build failed"
    # A private copy: other builds sharing target/ must not swap the binary in the middle of a run.
    cp "$repo/target/release/vrepo" "$vr.tmp" && mv "$vr.tmp" "$vr"
fi

# py MODE ARGS...: the small helpers that need block-wise byte comparisons or random offsets.
#   ranges OLD NEW DIR   qemu-io commands writing NEW's 64 KiB blocks that differ from OLD's
#                        (adjacent ones merged into one run; each run's bytes saved in DIR)
#   same OLD NEW         "EQUAL TOTAL": OLD's 64 KiB blocks found unchanged at the same offset
#   random SIZE KIB DIR  qemu-io commands writing KIB KiB of random bytes at random offsets
#                        below SIZE: half in 64 KiB aligned runs of 64 to 512 KiB, half in
#                        scattered 4 KiB writes
py() {
    python3 - "$@" <<'PY'
import os, random, sys
B = 65536
mode, args = sys.argv[1], sys.argv[2:]
if mode == "ranges":
    old, new, d = args
    os.makedirs(d, exist_ok=True)
    runs = []
    with open(old, "rb") as fa, open(new, "rb") as fb:
        off, start, chunks = 0, None, []
        while True:
            a, b = fa.read(B), fb.read(B)
            if not b:
                break
            if a != b:
                if start is None:
                    start = off
                chunks.append(b)
            elif start is not None:
                runs.append((start, b"".join(chunks)))
                start, chunks = None, []
            off += len(b)
        if start is not None:
            runs.append((start, b"".join(chunks)))
    for i, (start, data) in enumerate(runs):
        p = os.path.join(d, str(i))
        with open(p, "wb") as f:
            f.write(data)
        print(f"write -q -s {p} {start} {len(data)}")
elif mode == "same":
    old, new = args
    same = total = 0
    with open(old, "rb") as fa, open(new, "rb") as fb:
        while True:
            a = fa.read(B)
            if not a:
                break
            total += 1
            same += a == fb.read(B)
    print(same, total)
elif mode == "random":
    size, kib, d = int(args[0]), int(args[1]), args[2]
    os.makedirs(d, exist_ok=True)
    left, i = kib * 1024, 0
    while left > 0:
        if left > kib * 512:  # the first half: runs of 64 to 512 KiB, grain-aligned
            n = min(left, random.randint(1, 8) * B)
            off = random.randrange(0, size // B - 8) * B
        else:  # the second half: scattered 4 KiB writes (guest metadata, logs)
            n = min(left, 4096)
            off = random.randrange(0, size // 4096 - 1) * 4096
        p = os.path.join(d, str(i))
        with open(p, "wb") as f:
            f.write(os.urandom(n))
        print(f"write -q -s {p} {off} {n}")
        left -= n
        i += 1
PY
}

# inplace VMDK CMDS: run the qemu-io commands in CMDS on VMDK (in place).
inplace() {
    qemu-io -f vmdk "$1" <"$2" >"$log/qemu-io.log" 2>&1 || die "qemu-io on $1 failed: $(tail -n3 "$log/qemu-io.log")"
}

# --- The working-area states -------------------------------------------------------------------

stamp=$work/states.stamp
want_stamp="data_mib=$data_mib disk_gib=$disk_gib churn=$churn files=${files[*]}"

# stage DEST SKIP_MIB LIMIT_MIB: copy LIMIT_MIB of regular files from BENCH_FILES into DEST, after
# skipping the first SKIP_MIB (so calls give disjoint sets of real files). As in bench-vdiff.sh.
stage() {
    local dest=$1 skip=$(($2 * MIB)) limit=$(($3 * MIB)) seen=0 total=0 size path
    rm -rf "$dest"
    mkdir -p "$dest"
    find "${files[@]}" -xdev -type f -size -65536k -readable -printf '%s\t%p\0' |
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

# evolve N: raw state N from raw state N-1 with debugfs -w: the files staged in new$N written to
# /new$N; every (100/churn)th file of state 0 (a different residue per state) deleted or
# rewritten with a header line added. Names with blanks or quotes are left alone.
evolve() {
    local n=$1 prev=$(($1 - 1)) cmds=$work/debugfs$1.cmds step=$((100 / churn)) i=0 j=0 f rel dir mod
    cp --sparse=always "$work/state$prev.raw" "$work/state$n.raw.tmp"
    printf 'mkdir /new%d\ncd /new%d\n' "$n" "$n" >"$cmds"
    while IFS= read -r -d '' f; do
        [[ $f == *[[:space:]\"]* ]] && continue
        i=$((i + 1))
        echo "write \"$f\" f$i" >>"$cmds"
    done < <(find "$work/new$n" -type f -print0 | sort -z)
    mkdir -p "$work/mod$n"
    while IFS= read -r -d '' f; do
        j=$((j + 1))
        ((j % step == n - 1)) || continue
        [[ $f == *[[:space:]\"]* ]] && continue
        rel=${f#"$work/staging"}
        dir=${rel%/*}
        echo "cd \"${dir:-/}\"" >>"$cmds"
        echo "rm \"${rel##*/}\"" >>"$cmds"
        if (((j / step) % 2 == 0)); then
            mod=$work/mod$n/$j
            { printf 'rewritten by bench-vrepo, state %d, file %d\n' "$n" "$j"; cat "$f"; } >"$mod"
            echo "write \"$mod\" \"${rel##*/}\"" >>"$cmds"
        fi
    done < <(find "$work/staging" -type f -print0 | sort -z)
    debugfs -w -f "$cmds" "$work/state$n.raw.tmp" >/dev/null 2>"$log/debugfs$n.log" || die "debugfs failed (see $log/debugfs$n.log)"
    mv "$work/state$n.raw.tmp" "$work/state$n.raw"
}

write_vmx() {
    cat <<'VMX'
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "bench"
guestOS = "debian12-64"
memSize = "1024"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "bench.vmdk"
nvram = "bench.nvram"
VMX
}

if [[ -f $stamp && $(<"$stamp") == "$want_stamp" && -f $work/wa0/bench.vmdk && -f $work/wa1/bench.vmdk && -f $work/wa2/bench.vmdk ]]; then
    say "reusing the working-area states in $work ($want_stamp)"
else
    rm -rf "$stamp" "$work"/wa[0-9] "$work"/state[0-9].raw*
    new_mib=$((data_mib * churn / 100))
    ((new_mib > 0)) || new_mib=1
    say "staging ~$data_mib MiB of files from /usr, and 2 x ~$new_mib MiB of other files"
    stage "$work/staging" 0 "$data_mib"
    stage "$work/new1" "$data_mib" "$new_mib"
    stage "$work/new2" "$((data_mib + new_mib))" "$new_mib"
    say "state 0: mke2fs -t ext4 -d staging (${disk_gib} GiB), qemu-img convert -O vmdk"
    truncate -s "${disk_gib}G" "$work/state0.raw"
    mke2fs -q -F -t ext4 -L vmlbench -d "$work/staging" "$work/state0.raw"
    mkdir -p "$work/wa0.tmp"
    qemu-img convert -f raw -O vmdk "$work/state0.raw" "$work/wa0.tmp/bench.vmdk"
    write_vmx >"$work/wa0.tmp/bench.vmx"
    head -c 270336 /dev/urandom >"$work/wa0.tmp/bench.nvram"
    mv "$work/wa0.tmp" "$work/wa0"
    : >"$work/layout.txt"
    for n in 1 2; do
        prev=$((n - 1))
        say "state $n: debugfs -w (new files, $churn% of the files deleted or rewritten), changed grains written in place"
        evolve "$n"
        rm -rf "$work/wa$n.tmp" "$work/ranges"
        cp -a "$work/wa$prev" "$work/wa$n.tmp"
        py ranges "$work/state$prev.raw" "$work/state$n.raw" "$work/ranges" >"$work/ranges.cmds"
        inplace "$work/wa$n.tmp/bench.vmdk" "$work/ranges.cmds"
        qemu-img compare -q -f raw -F vmdk "$work/state$n.raw" "$work/wa$n.tmp/bench.vmdk" ||
            die "state $n: the VMDK written in place differs from the raw image"
        # The firmware changes a few bytes of its nvram too.
        printf 'bench state %d' "$n" | dd of="$work/wa$n.tmp/bench.nvram" bs=1 seek=$((4096 * n)) conv=notrunc status=none
        read -r same total < <(py same "$work/wa$prev/bench.vmdk" "$work/wa$n.tmp/bench.vmdk")
        printf 'state %d: %d writes, %s MiB of grains written; %d of %d 64 KiB blocks of the VMDK unchanged in place; VMDK %s -> %s bytes\n' \
            "$n" "$(wc -l <"$work/ranges.cmds")" "$(du -sm "$work/ranges" | cut -f1)" "$same" "$total" \
            "$(stat -c %s "$work/wa$prev/bench.vmdk")" "$(stat -c %s "$work/wa$n.tmp/bench.vmdk")" >>"$work/layout.txt"
        mv "$work/wa$n.tmp" "$work/wa$n"
    done
    rm -rf "$work/staging" "$work"/new[0-9] "$work"/mod[0-9] "$work/ranges" "$work"/state[0-9].raw
    echo "$want_stamp" >"$stamp"
fi
cat "$work/layout.txt" >&2
if [[ ${BENCH_ONLY_STATES:-0} == 1 ]]; then
    say "the working-area states are in $work (BENCH_ONLY_STATES=1: nothing timed)"
    exit 0
fi

# --- Timing ------------------------------------------------------------------------------------

# timed NAME COMMAND...: wall seconds and peak RSS (KiB) into wall[NAME] and rss[NAME].
declare -A wall rss
timed() {
    local name=$1 status=0
    shift
    /usr/bin/time -f '%e %M' -o "$work/time.txt" -- "$@" >"$log/$name.out" 2>"$log/$name.err" || status=$?
    read -r "wall[$name]" "rss[$name]" < <(tail -n1 "$work/time.txt")
    ((status == 0)) || die "$name failed (exit $status): $* : $(tail -n5 "$log/$name.err")"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
kib2mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
wrong=0
# check_tree NAME GOT WANT: GOT must hold exactly WANT's files and folders, byte for byte.
check_tree() {
    local name=$1 got=$2 want=$3 f
    if [[ ! -d $got ]] || ! diff <(cd "$want" && find . -mindepth 1 -printf '%y %P\n' | sort) \
        <(cd "$got" && find . -mindepth 1 -printf '%y %P\n' | sort) >"$log/$name.tree-diff"; then
        say "WRONG: $name: the restored files are not the working area's (see $log/$name.tree-diff)"
        wrong=1
        return
    fi
    while IFS= read -r -d '' f; do
        if ! cmp -s "$want/$f" "$got/$f"; then
            say "WRONG: $name: $f differs from the working area's"
            wrong=1
        fi
    done < <(cd "$want" && find . -type f -printf '%P\0')
}

missed=0
goal() { # goal TEXT OK
    if [[ $2 == 1 ]]; then printf '  ok    %s\n' "$1"; else
        printf '  MISS  %s\n' "$1"
        missed=1
    fi
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }' && echo 1 || echo 0; }
# add A B: A + B with two decimals.
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }

repos=$work/repos
wa=$work/workarea
dest=$work/dest
vsize=$((disk_gib * 1024 * MIB))
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/cache/restic
export BORG_BASE_DIR=$work/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# save_states TOOL...: the working area takes states 0, 1 and 2 in turn, each saved by every TOOL
# (vrepo, restic, borg) into its repository under $repos, timed as save_TOOL_N.
save_states() {
    local n f t
    for n in 0 1 2; do
        if ((n == 0)); then
            rm -rf "$wa"
            cp -a "$work/wa0" "$wa"
        else
            # The files that changed are copied over the working area's (same inodes), then touched
            # as a running VM's would be; the .vmx is left alone.
            for f in bench.vmdk bench.nvram; do
                cmp -s "$work/wa$n/$f" "$wa/$f" || cp "$work/wa$n/$f" "$wa/$f"
            done
        fi
        touch "$wa/bench.vmdk" "$wa/bench.nvram"
        cat "$wa"/* >/dev/null # read once: every contender reads it from the page cache
        sync # the copy's writeback must not run under the first contender's save
        for t in "$@"; do
            say "state $n: $t save"
            case $t in
            vrepo) timed "save_vrepo_$n" "$vr" -r "$repos/vrepo" save "$wa" -m "state $n" --json ;;
            restic) timed "save_restic_$n" restic -r "$repos/restic" backup "$wa" ;;
            borg) timed "save_borg_$n" env -C "$work" borg create "$repos/borg::s$n" workarea ;;
            esac
        done
        if ((n == 0)); then
            # Kept for the second save's repeats (see repeat_second_saves).
            rm -rf "$work/s0"
            mkdir -p "$work/s0"
            for t in vrepo restic; do
                [[ -d $repos/$t ]] && cp -a "$repos/$t" "$work/s0/$t"
            done
            cp -a "$RESTIC_CACHE_DIR" "$work/s0/restic-cache" 2>/dev/null || true
        fi
    done
}

# wa_state N: the working area's changed files set to state N (copied over, touched, read once
# into the page cache, synced), as save_states does.
wa_state() {
    local f
    for f in bench.vmdk bench.nvram; do
        cmp -s "$work/wa$1/$f" "$wa/$f" || cp "$work/wa$1/$f" "$wa/$f"
    done
    touch "$wa/bench.vmdk" "$wa/bench.nvram"
    cat "$wa"/* >/dev/null
    sync
}

# repeat_second_saves: the second save (the incremental save of the goal) timed runs-1 times
# more for vrepo and restic, each run on a copy of the repository (and restic's cache) as state
# 0 left it, the working area back in state 1, the order alternated; save_TOOL_1 becomes the
# median of all runs (the builds are medians too: one run of a sub-second save is mostly noise).
# The working area is left in state 2. Borg's second save stays a single run: borg refuses a
# repository older than the one its cache has seen.
declare -A sruns
repeat_second_saves() {
    local r t k ws order=(vrepo restic)
    wa_state 1
    for t in "${order[@]}"; do sruns[$t]=${wall[save_${t}_1]}; done
    for ((r = 2; r <= runs; r++)); do
        for ((k = 0; k < 2; k++)); do
            t=${order[(k + r) % 2]}
            say "state 1 again ($r/$runs): $t save on a copy of the state-0 repository"
            rm -rf "$work/s0x" "$work/s0x-cache"
            cp -a "$work/s0/$t" "$work/s0x"
            sync
            case $t in
            vrepo) timed "save_vrepo_1_$r" "$vr" -r "$work/s0x" save "$wa" -m "state 1" --json ;;
            restic)
                cp -a "$work/s0/restic-cache" "$work/s0x-cache"
                sync
                timed "save_restic_1_$r" env RESTIC_CACHE_DIR="$work/s0x-cache" restic -r "$work/s0x" backup "$wa"
                ;;
            esac
            sruns[$t]+=" ${wall[save_${t}_1_$r]}"
            rss[save_${t}_1]=$(maxof "${rss[save_${t}_1]} ${rss[save_${t}_1_$r]}")
        done
    done
    for t in "${order[@]}"; do wall[save_${t}_1]=$(median "${sruns[$t]}"); done
    rm -rf "$work/s0" "$work/s0x" "$work/s0x-cache"
    wa_state 2
}

# series REPO WA N NAME: a new vrepo repository REPO given N entries saved from the working area
# WA: E1 full, then incremental saves, each after chain_kib KiB of random bytes written in place
# into WA's disk (see the header). Saves timed as NAME_save_E.
series() {
    local r=$1 w=$2 n=$3 name=$4 e
    "$vr" -r "$r" init >"$log/vrepo-init-$name.log" 2>&1 || die "vrepo init failed: $(tail -n3 "$log/vrepo-init-$name.log")"
    say "$name: $n saves, $chain_kib KiB written in place before each but the first"
    for ((e = 1; e <= n; e++)); do
        if ((e > 1)); then
            rm -rf "$work/ranges"
            py random "$vsize" "$chain_kib" "$work/ranges" >"$work/ranges.cmds"
            inplace "$w/bench.vmdk" "$work/ranges.cmds"
        fi
        timed "${name}_save_$e" "$vr" -r "$r" save "$w" -m "$name $e" --json
    done
    rm -rf "$work/ranges"
}

# complete REPO N: REPO is a vrepo repository whose newest entry is EN.
complete() { [[ -d $1/entries/E$2 && ! -e $1/entries/E$(($2 + 1)) ]]; }

# ensure_series REPO WA N NAME: REPO reused when complete with N entries, else made by series from
# a copy of state 2.
ensure_series() {
    if complete "$1" "$3"; then
        say "reusing $1 (E$3)"
        return
    fi
    rm -rf "$1" "$2"
    cp -a "$work/wa2" "$2"
    series "$@"
}

# --- The rewrites (issue 6) --------------------------------------------------------------------

rw=$work/rewrite
declare -A rwf # the rewrites' figures

# ref_read NAME REPO ENTRY DIR: the reference for a rewrite of ENTRY: build it into DIR (kept,
# the bytes before the rewrite), then cat the built files to /dev/null; the chain's stored
# deltas are also read with cat (info), and DIR is saved --full into a scratch repository (info).
ref_read() {
    local name=$1 r=$2 e=$3 d=$4 x deltas=()
    rm -rf "$d" "$rw/scratch"
    mkdir -p "$d"
    sync
    timed "${name}_refbuild" "$vr" -r "$r" build "$e" "$d"
    sync
    # shellcheck disable=SC2016 # expanded by the inner shell
    timed "${name}_refcat" sh -c 'find "$1" -type f -exec cat {} + >/dev/null' sh "$d"
    while read -r x _; do
        deltas+=("$r/entries/$x/delta.vdelta")
    done < <("$vr" -r "$r" deps "$e")
    # shellcheck disable=SC2016 # expanded by the inner shell
    timed "${name}_refdeltas" sh -c 'cat "$@" >/dev/null' sh "${deltas[@]}"
    rwf[${name}_deltabytes]=$(cat "${deltas[@]}" | wc -c)
    "$vr" -r "$rw/scratch" init >/dev/null 2>&1 || die "vrepo init failed"
    timed "${name}_reffull" "$vr" -r "$rw/scratch" save "$d" --full -m full --json
    rm -rf "$rw/scratch"
}

# before NAME REPO ENTRY...: build each ENTRY of REPO into $rw/NAME-ENTRY (the bytes before a
# rewrite). after NAME REPO ENTRY...: build each again and compare with those.
before() {
    local name=$1 r=$2 e
    shift 2
    for e in "$@"; do
        rm -rf "${rw:?}/$name-$e"
        "$vr" -r "$r" build "$e" "$rw/$name-$e" >"$log/$name-before-$e.log" 2>&1 || die "$name: build $e before the rewrite failed: $(tail -n3 "$log/$name-before-$e.log")"
    done
}
after() {
    local name=$1 r=$2 e
    shift 2
    for e in "$@"; do
        rm -rf "$dest"
        if "$vr" -r "$r" build "$e" "$dest" >"$log/$name-after-$e.log" 2>&1; then
            check_tree "$name: $e after the rewrite" "$dest" "$rw/$name-$e"
        else
            say "WRONG: $name: build $e after the rewrite failed: $(tail -n3 "$log/$name-after-$e.log")"
            wrong=1
        fi
        rm -rf "$dest" "${rw:?}/$name-$e"
    done
    rwf[${name}_checked]="$*"
}

rewrites() {
    local e p plan mid db keep=$((prune_n / 2)) kept=() rewritten=() check=() more=() ws vs t r
    rm -rf "$rw"
    mkdir -p "$rw"
    rwf[load_before]=$(uptime)

    # consolidate --full of the chain's last entry
    say "consolidate: copying the chain"
    cp -a "$repos/chain" "$rw/chain"
    say "consolidate: the reference (build E$chain, cat)"
    ref_read cons "$rw/chain" "E$chain" "$rw/cons-E$chain"
    mid=E$(((chain + 1) / 2))
    before cons "$rw/chain" "$mid"
    sync
    say "consolidate --full E$chain"
    timed cons "$vr" -r "$rw/chain" consolidate --full "E$chain"
    after cons "$rw/chain" "E$chain" "$mid"
    rm -rf "$rw/chain"

    # prune --keep-last N/2 of the N-entry repository
    ensure_series "$repos/prune" "$work/prunewa" "$prune_n" prune
    say "prune: copying the $prune_n-entry repository"
    cp -a "$repos/prune" "$rw/prune"
    plan=$("$vr" -r "$rw/prune" prune --keep-last "$keep" --dry-run) || die "prune --dry-run failed"
    printf '%s\n' "$plan" >"$log/prune-plan.txt"
    while read -r _ verb e _; do
        [[ $verb == rewrite ]] && rewritten+=("${e%:}")
    done <<<"$plan"
    read -r -a kept < <(sed -n 's/^would keep [0-9]* entries: //p' <<<"$plan" | tr -d ',')
    ((${#kept[@]} > 0)) || die "prune --dry-run: no kept entries in its plan (see $log/prune-plan.txt)"
    rwf[prune_removed]=$(grep -c '^would remove ' <<<"$plan" || true)
    rwf[prune_rewritten]=${rewritten[*]:-none}
    rwf[prune_refbuild]=0 rwf[prune_refcat]=0 rwf[prune_refdeltas]=0 rwf[prune_reffull]=0 rwf[prune_deltabytes]=0
    for e in "${rewritten[@]}"; do
        say "prune: the reference (build $e, cat)"
        ref_read "prune$e" "$rw/prune" "$e" "$rw/prune-$e"
        for t in refbuild refcat refdeltas reffull; do
            rwf[prune_$t]=$(add "${rwf[prune_$t]}" "${wall[prune${e}_$t]}")
        done
        db=${rwf[prune${e}_deltabytes]}
        rwf[prune_deltabytes]=$((rwf[prune_deltabytes] + db))
    done
    mid=${kept[${#kept[@]} / 2]}
    # The entries checked: the rewritten ones (built by ref_read), the middle kept one, the last;
    # each once (they may coincide when few entries are kept).
    mapfile -t check < <(printf '%s\n' "${rewritten[@]}" "$mid" "${kept[-1]}" | awk '!seen[$0]++')
    mapfile -t more < <(printf '%s\n' "${check[@]}" | grep -vxF -f <(printf '%s\n' "${rewritten[@]}" ""))
    before prune "$rw/prune" "${more[@]}"
    sync
    say "prune --keep-last $keep"
    timed prune "$vr" -r "$rw/prune" prune --keep-last "$keep"
    after prune "$rw/prune" "${check[@]}"
    rm -rf "$rw/prune"

    # verify --read-data against restic check --read-data
    ws="" vs=""
    for ((r = 1; r <= runs; r++)); do
        if ((r % 2)); then p=(vrepo restic); else p=(restic vrepo); fi
        for t in "${p[@]}"; do
            say "verify $r/$runs: $t"
            if [[ $t == vrepo ]]; then
                timed "verify_vrepo_$r" "$vr" -r "$repos/vrepo" verify --read-data
                vs+=" ${wall[verify_vrepo_$r]}"
            else
                timed "verify_restic_$r" restic -r "$repos/restic" check --read-data
                ws+=" ${wall[verify_restic_$r]}"
            fi
        done
    done
    rwf[verify_vrepo]=$(median "$vs")
    rwf[verify_restic]=$(median "$ws")
    rwf[verify_vrepo_runs]=${vs# }
    rwf[verify_restic_runs]=${ws# }
    timed verify_vrepo_struct "$vr" -r "$repos/vrepo" verify
    timed verify_restic_struct restic -r "$repos/restic" check
    rwf[load_after]=$(uptime)
    rm -rf "$rw"
}

report_rewrites() {
    local cref pref rc rp rv
    cref=$(add "${wall[cons_refbuild]}" "${wall[cons_refcat]}")
    pref=$(add "${rwf[prune_refbuild]}" "${rwf[prune_refcat]}")
    rc=$(ratio "${wall[cons]}" "$cref")
    rp=$(ratio "${wall[prune]}" "$pref")
    rv=$(ratio "${rwf[verify_restic]}" "${rwf[verify_vrepo]}")
    printf '\nrewrites (%s)\n' "$rev"
    printf '  load before: %s\n  load after:  %s\n' "${rwf[load_before]# }" "${rwf[load_after]# }"
    printf '  consolidate --full E%d of the %d-entry chain: %s s (peak RSS %s MiB)\n' "$chain" "$chain" "${wall[cons]}" "$(kib2mib "${rss[cons]}")"
    printf '    reference: build E%d %s s + cat of the built files %s s = %s s\n' "$chain" "${wall[cons_refbuild]}" "${wall[cons_refcat]}" "$cref"
    printf '    info: cat of the chain'"'"'s %d stored deltas (%s MiB) %s s; save --full of the built folder %s s\n' \
        "$chain" "$(mib "${rwf[cons_deltabytes]}")" "${wall[cons_refdeltas]}" "${wall[cons_reffull]}"
    printf '    built the same bytes before and after: %s\n' "${rwf[cons_checked]}"
    printf '  prune --keep-last %d of %d entries: %s s (peak RSS %s MiB); removed %s, rewrote %s\n' \
        "$((prune_n / 2))" "$prune_n" "${wall[prune]}" "$(kib2mib "${rss[prune]}")" "${rwf[prune_removed]}" "${rwf[prune_rewritten]}"
    printf '    reference: build of the rewritten entries %s s + cat of the built files %s s = %s s\n' "${rwf[prune_refbuild]}" "${rwf[prune_refcat]}" "$pref"
    printf '    info: cat of their chains'"'"' stored deltas (%s MiB) %s s; save --full of the built folders %s s\n' \
        "$(mib "${rwf[prune_deltabytes]}")" "${rwf[prune_refdeltas]}" "${rwf[prune_reffull]}"
    printf '    built the same bytes before and after: %s\n' "${rwf[prune_checked]}"
    printf '  verify of the three states (medians of %d): vrepo verify --read-data %s s (%s), restic check --read-data %s s (%s)\n' \
        "$runs" "${rwf[verify_vrepo]}" "${rwf[verify_vrepo_runs]}" "${rwf[verify_restic]}" "${rwf[verify_restic_runs]}"
    printf '    info: vrepo verify (structure) %s s, restic check (no data) %s s\n' "${wall[verify_vrepo_struct]}" "${wall[verify_restic_struct]}"
    printf '\ngoals (rewrites):\n'
    goal "consolidate --full E$chain ${rc}x the time of building E$chain and reading the built files once (goal <= 1)" "$(ge 1 "$rc")"
    goal "prune of $((prune_n - prune_n / 2)) of $prune_n entries ${rp}x the time of building the entries it rewrites and reading them once (goal <= 1)" "$(ge 1 "$rp")"
    goal "verify --read-data ${rv}x faster than restic check --read-data (goal >= 3)" "$(ge "$rv" 3)"
}

# --- Only the rewrites -------------------------------------------------------------------------

if [[ $only_rewrite == 1 ]]; then
    mkdir -p "$repos" "$work/cache"
    nsnap=$(restic -r "$repos/restic" snapshots --json 2>/dev/null | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
    if complete "$repos/vrepo" 3 && [[ $nsnap == 3 ]]; then
        say "reusing $repos/vrepo and $repos/restic (3 states)"
    else
        rm -rf "$repos/vrepo" "$repos/restic"
        restic -r "$repos/restic" init >"$log/restic-init.log" 2>&1 || die "restic init failed: $(tail -n3 "$log/restic-init.log")"
        "$vr" -r "$repos/vrepo" init >"$log/vrepo-init.log" 2>&1 || die "vrepo init failed: $(tail -n3 "$log/vrepo-init.log")"
        save_states vrepo restic
    fi
    ensure_series "$repos/chain" "$work/chainwa" "$chain" chain
    rewrites
    report_rewrites
    rm -rf "$dest"
    ((wrong == 0)) || exit 1
    ((strict == 1 && missed == 1)) && exit 3
    exit 0
fi

rm -rf "$repos" "$wa" "$dest" "$work/cache" "$work/chainwa" "$work/prunewa"
mkdir -p "$repos" "$work/cache"
restic -r "$repos/restic" init >"$log/restic-init.log" 2>&1 || die "restic init failed: $(tail -n3 "$log/restic-init.log")"
borg init --encryption none "$repos/borg" >"$log/borg-init.log" 2>&1 || die "borg init failed: $(tail -n3 "$log/borg-init.log")"
if [[ $skip_vrepo != 1 ]]; then
    "$vr" -r "$repos/vrepo" init >"$log/vrepo-init.log" 2>&1 || die "vrepo init failed: $(tail -n3 "$log/vrepo-init.log")"
fi

# --- Saves of the three states -----------------------------------------------------------------

if [[ $skip_vrepo != 1 ]]; then save_states vrepo restic borg; else save_states restic borg; fi
declare -A size
for t in vrepo restic borg; do
    [[ -d $repos/$t ]] && size[$t]=$(du -sb "$repos/$t" | cut -f1)
done
if [[ $skip_vrepo != 1 ]]; then
    "$vr" -r "$repos/vrepo" list --json >"$log/vrepo-list.json" 2>&1
    # The newest state once more, as a full entry of its own repository: what the newest
    # (incremental) entry's build costs over a full one's.
    "$vr" -r "$repos/vrepo-full" init >"$log/vrepo-init-full.log" 2>&1 || die "vrepo init failed: $(tail -n3 "$log/vrepo-init-full.log")"
    say "state 2: vrepo save --full (into another repository)"
    timed save_vrepo_full "$vr" -r "$repos/vrepo-full" save "$wa" --full -m "state 2, full" --json
    ((runs > 1)) && repeat_second_saves
fi

# --- Builds of the newest state ----------------------------------------------------------------

# build TOOL RUN: restore the newest state with TOOL into an empty folder, timed, then checked.
build() {
    local t=$1 r=$2 got
    rm -rf "$dest"
    mkdir -p "$dest"
    sync
    case $t in
    vrepo)
        timed "build_vrepo_$r" "$vr" -r "$repos/vrepo" build latest "$dest"
        got=$dest
        ;;
    vrepofull)
        timed "build_vrepofull_$r" "$vr" -r "$repos/vrepo-full" build latest "$dest"
        got=$dest
        ;;
    restic)
        timed "build_restic_$r" restic -r "$repos/restic" restore latest --target "$dest"
        got=$dest$wa
        ;;
    borg)
        timed "build_borg_$r" env -C "$dest" borg extract "$repos/borg::s2"
        got=$dest/workarea
        ;;
    cp)
        timed "build_cp_$r" cp -a "$wa/." "$dest/"
        got=$dest
        ;;
    cpsync)
        # shellcheck disable=SC2016 # expanded by the inner shell
        timed "build_cpsync_$r" sh -c 'cp -a "$1/." "$2/" && sync "$2"/*' sh "$wa" "$dest"
        got=$dest
        ;;
    esac
    check_tree "build $t (run $r)" "$got" "$wa"
    rm -rf "$dest"
}
tools=(restic borg cp cpsync)
[[ $skip_vrepo != 1 ]] && tools=(vrepo vrepofull "${tools[@]}")
for ((r = 1; r <= runs; r++)); do
    # Interleaved, and the order rotated each run.
    for ((k = 0; k < ${#tools[@]}; k++)); do
        t=${tools[(k + r - 1) % ${#tools[@]}]}
        say "build $r/$runs: $t"
        build "$t" "$r"
    done
done
declare -A bmed brss bruns
for t in "${tools[@]}"; do
    ws="" rs=""
    for ((r = 1; r <= runs; r++)); do
        ws+=" ${wall[build_${t}_$r]}"
        rs+=" ${rss[build_${t}_$r]}"
    done
    bmed[$t]=$(median "$ws")
    brss[$t]=$(maxof "$rs")
    bruns[$t]=${ws# }
done

# --- The chain ---------------------------------------------------------------------------------

if [[ $skip_vrepo != 1 ]]; then
    cw=$work/chainwa
    cp -a "$work/wa2" "$cw"
    series "$repos/chain" "$cw" "$chain" chain
    chain_ws="" chain_rs=""
    for ((e = 1; e <= chain; e++)); do
        ((e > 1)) && chain_ws+=" ${wall[chain_save_$e]}"
        chain_rs+=" ${rss[chain_save_$e]}"
    done
    size[chain]=$(du -sb "$repos/chain" | cut -f1)
    "$vr" -r "$repos/chainfull" init >"$log/vrepo-init-chainfull.log" 2>&1 || die "vrepo init failed"
    say "chain: the final state saved --full into another repository"
    timed chain_full_save "$vr" -r "$repos/chainfull" save "$cw" --full -m "full" --json
    chain_build() { # chain_build KIND RUN
        rm -rf "$dest"
        mkdir -p "$dest"
        sync
        if [[ $1 == chain ]]; then
            timed "cbuild_chain_$2" "$vr" -r "$repos/chain" build "E$chain" "$dest"
        else
            timed "cbuild_full_$2" "$vr" -r "$repos/chainfull" build latest "$dest"
        fi
        check_tree "build $1 (run $2)" "$dest" "$cw"
        rm -rf "$dest"
    }
    cws="" fws="" crs=""
    for ((r = 1; r <= runs; r++)); do
        if ((r % 2)); then order=(chain full); else order=(full chain); fi
        for k in "${order[@]}"; do
            say "chain build $r/$runs: $k"
            chain_build "$k" "$r"
        done
        cws+=" ${wall[cbuild_chain_$r]}"
        fws+=" ${wall[cbuild_full_$r]}"
        crs+=" ${rss[cbuild_chain_$r]} ${rss[cbuild_full_$r]}"
    done
    c_med=$(median "$cws")
    f_med=$(median "$fws")
fi

# --- Report ------------------------------------------------------------------------------------

wa_bytes=$(du -sb "$wa" | cut -f1)
printf '\nvrepo benchmark, %s (%s), disk %s GiB, data %s MiB, churn %s%% per state, working area %s MiB\n' \
    "$(date -u +%F)" "$rev" "$disk_gib" "$data_mib" "$churn" "$(mib "$wa_bytes")"
sed 's/^/  /' "$work/layout.txt"
printf '\n%-34s %10s %10s\n' "save" "wall s" "RSS MiB"
srow() { [[ -n ${wall[$2]:-} ]] && printf '%-34s %10s %10s\n' "$1" "${wall[$2]}" "$(kib2mib "${rss[$2]}")"; }
for n in 0 1 2; do
    if ((n == 1)) && [[ -n ${sruns[vrepo]:-} ]]; then
        printf '%-34s %10s %10s   %s\n' "state 1: vrepo save (median)" "${wall[save_vrepo_1]}" "$(kib2mib "${rss[save_vrepo_1]}")" "${sruns[vrepo]}"
        printf '%-34s %10s %10s   %s\n' "state 1: restic backup (median)" "${wall[save_restic_1]}" "$(kib2mib "${rss[save_restic_1]}")" "${sruns[restic]}"
        srow "state 1: borg create" "save_borg_1"
        continue
    fi
    srow "state $n: vrepo save" "save_vrepo_$n" || true
    srow "state $n: restic backup" "save_restic_$n"
    srow "state $n: borg create" "save_borg_$n"
done
srow "state 2: vrepo save --full" save_vrepo_full || true
printf '\n%-34s %10s %10s   %s\n' "build the newest (median of $runs)" "wall s" "RSS MiB" "each run, s"
for t in "${tools[@]}"; do
    case $t in
    vrepo) label="vrepo build latest" ;;
    vrepofull) label="vrepo build (a full entry)" ;;
    restic) label="restic restore latest" ;;
    borg) label="borg extract" ;;
    cp) label="cp -a" ;;
    cpsync) label="cp -a, then sync of its files" ;;
    esac
    printf '%-34s %10s %10s   %s\n' "$label" "${bmed[$t]}" "$(kib2mib "${brss[$t]}")" "${bruns[$t]}"
done
printf '\n%-34s %10s\n' "repository after 3 states" "MiB"
for t in vrepo restic borg; do
    [[ -n ${size[$t]:-} ]] && printf '%-34s %10s\n' "$t" "$(mib "${size[$t]}")"
done

if [[ $skip_vrepo != 1 ]]; then
    printf '\nchain of %d entries (%s KiB written before each save; repository %s MiB)\n' "$chain" "$chain_kib" "$(mib "${size[chain]}")"
    printf '  E1 (full) saved in %s s; incremental saves: median %s s, max %s s; peak RSS %s MiB; full save of the final state %s s\n' \
        "${wall[chain_save_1]}" "$(median "$chain_ws")" "$(maxof "$chain_ws")" "$(kib2mib "$(maxof "$chain_rs")")" "${wall[chain_full_save]}"
    printf '  build E%d %s s (%s), build the full entry %s s (%s) (medians of %d)\n' "$chain" "$c_med" "${cws# }" "$f_med" "${fws# }" "$runs"

    vrss=$(maxof "${rss[save_vrepo_0]} ${rss[save_vrepo_1]} ${rss[save_vrepo_2]} ${rss[save_vrepo_full]} ${brss[vrepo]} ${brss[vrepofull]} $chain_rs ${rss[chain_full_save]} $crs")
    r_full=$(ratio "${wall[save_restic_0]}" "${wall[save_vrepo_0]}")
    r_inc=$(ratio "${wall[save_restic_1]}" "${wall[save_vrepo_1]}")
    r_inc2=$(ratio "${wall[save_restic_2]}" "${wall[save_vrepo_2]}")
    r_build=$(ratio "${bmed[restic]}" "${bmed[vrepo]}")
    r_cp=$(ratio "${bmed[vrepo]}" "${bmed[cp]}")
    r_size=$(ratio "${size[vrepo]}" "${size[restic]}")
    r_chain=$(ratio "$c_med" "$f_med")
    printf '\ngoals:\n'
    goal "full save ${r_full}x faster than restic's first backup (goal >= 2)" "$(ge "$r_full" 2)"
    goal "incremental save ${r_inc}x faster than restic's second backup (goal >= 5)" "$(ge "$r_inc" 5)"
    goal "build newest ${r_build}x faster than restic restore (goal >= 3)" "$(ge "$r_build" 3)"
    goal "build newest ${r_cp}x cp -a's time (goal <= 1.5)" "$(ge 1.5 "$r_cp")"
    goal "repository ${r_size}x restic's after 3 states (goal <= 1)" "$(ge 1 "$r_size")"
    goal "build E$chain of the chain ${r_chain}x the full entry's build (goal <= 1.5)" "$(ge 1.5 "$r_chain")"
    goal "vrepo peak RSS $(kib2mib "$vrss") MiB (goal < 256)" "$(ge 262143 "$vrss")"
    printf '  info  build newest (E3, incremental) %sx the build of a full entry of the same state\n' "$(ratio "${bmed[vrepo]}" "${bmed[vrepofull]}")"
    printf '  info  build newest %sx the time of cp -a followed by sync of the copied files (vrepo writes disks with O_DIRECT)\n' "$(ratio "${bmed[vrepo]}" "${bmed[cpsync]}")"
    printf '  info  third save (state 2) %sx faster than restic'"'"'s third\n' "$r_inc2"
    printf '  info  borg: saves %sx, %sx, %sx vrepo'"'"'s time; extract %sx vrepo'"'"'s build; repository %sx vrepo'"'"'s\n' \
        "$(ratio "${wall[save_borg_0]}" "${wall[save_vrepo_0]}")" "$(ratio "${wall[save_borg_1]}" "${wall[save_vrepo_1]}")" \
        "$(ratio "${wall[save_borg_2]}" "${wall[save_vrepo_2]}")" "$(ratio "${bmed[borg]}" "${bmed[vrepo]}")" \
        "$(ratio "${size[borg]}" "${size[vrepo]}")"
else
    printf '\ngoals: not checked (BENCH_SKIP_VREPO=1)\n'
    printf '  info  borg vs restic: first save %sx, second %sx faster; extract %sx faster; repository %sx restic'"'"'s\n' \
        "$(ratio "${wall[save_restic_0]}" "${wall[save_borg_0]}")" "$(ratio "${wall[save_restic_1]}" "${wall[save_borg_1]}")" \
        "$(ratio "${bmed[restic]}" "${bmed[borg]}")" "$(ratio "${size[borg]}" "${size[restic]}")"
    printf '  info  restic restore %sx cp -a'"'"'s time; borg extract %sx\n' "$(ratio "${bmed[restic]}" "${bmed[cp]}")" "$(ratio "${bmed[borg]}" "${bmed[cp]}")"
fi

if [[ $skip_vrepo != 1 && $skip_rewrite != 1 ]]; then
    rewrites
    report_rewrites
fi

rm -rf "$dest"
((wrong == 0)) || exit 1
((strict == 1 && missed == 1)) && exit 3
exit 0
