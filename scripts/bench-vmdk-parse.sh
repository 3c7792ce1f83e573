#!/usr/bin/env bash
# Benchmark `vmdk-parse cat -o` against `qemu-img convert -O raw` on a realistic disk.
#
# Builds (once, then reused) an ext4 file system holding real files copied from /usr, as a raw
# image, a monolithicSparse VMDK and a streamOptimized VMDK. Then, in one run and interleaved
# so machine noise hits every contender alike, times each of:
#   vmdk-parse cat DISK -o OUT          (ours, default: no fsync, like qemu-img)
#   qemu-img convert -O raw DISK OUT    (qemu-img's default for convert: no fsync)
#   vmdk-parse cat --sync DISK -o OUT   (ours, flushed to stable storage before the rename)
#   qemu-img convert ...; sync OUT      (the same durable work as --sync: its fair pair)
#   cat RAW > OUT                       (reading the raw image and writing every byte: the
#                                        physical limit of this machine, no fsync)
# Every output is compared byte for byte with the raw image: a fast wrong answer fails.
# Then a 3 TiB monolithicSparse disk holding a few MiB: `info`, `map` and `cat -o` must cost
# what the data costs, not what the virtual size is.
#
# Usage: scripts/bench-vmdk-parse.sh [--strict]
#   --strict   exit 3 when a speed or memory goal is missed (default: report it, exit 0)
#
# Environment (default in brackets):
#   BENCH_WORK         work folder; images are kept there and reused [REPO/bench-work]
#   BENCH_RUNS         timed runs per contender; the median is reported [3]
#   BENCH_DATA_MIB     MiB of files copied from /usr into the file system [1024]
#   BENCH_DISK_GIB     size of the ext4 file system, GiB [4]
#   BENCH_BIG_TIMEOUT  seconds allowed to each command on the 3 TiB disk [300]
#   BENCH_BIG_GOAL_S   seconds within which each vmdk-parse command on it should finish [10]
#   BENCH_SKIP_BIG     set to 1 to skip the 3 TiB case [0]
#   BENCH_VMDK_PARSE   an already built vmdk-parse to time instead of building this tree's [unset]
#
# Exit codes: 0 done (goals missed are printed), 1 an output differs or a command failed,
# 2 usage or setup error, 3 a goal missed with --strict.
#
# The page cache is not dropped (that needs privileges and is unreliable on shared machines):
# inputs are read once before timing, so every contender reads them from memory, and outputs
# are synced and deleted (untimed) between runs, so no run pays for the previous one's writeback.
set -euo pipefail

readonly GOAL_SPARSE=1.5
readonly GOAL_STREAM=2.0
readonly GOAL_RSS_MIB=64
readonly BIG_BYTES=$((3 * 1024 ** 4))
readonly MIB=$((1024 * 1024))

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_WORK:-$repo/bench-work}
runs=${BENCH_RUNS:-3}
data_mib=${BENCH_DATA_MIB:-1024}
disk_gib=${BENCH_DISK_GIB:-4}
big_timeout=${BENCH_BIG_TIMEOUT:-300}
big_goal_s=${BENCH_BIG_GOAL_S:-10}
skip_big=${BENCH_SKIP_BIG:-0}
# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
bench_args "$@"
for n in "$runs" "$data_mib" "$disk_gib" "$big_timeout"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done

# --- Tools -------------------------------------------------------------------------------------

need mke2fs e2fsprogs
need /usr/bin/time time
need qemu-img qemu-utils
need qemu-io qemu-utils
need cmp diffutils
command -v cargo >/dev/null || die "cargo is missing (install Rust: https://rustup.rs)"

mkdir -p "$work/out" "$work/bin"
work=$(cd "$work" && pwd)
out=$work/out

vp=$work/bin/vmdk-parse
if [[ -n ${BENCH_VMDK_PARSE:-} ]]; then
    [[ -x $BENCH_VMDK_PARSE ]] || die "BENCH_VMDK_PARSE=$BENCH_VMDK_PARSE is not executable"
    built=$BENCH_VMDK_PARSE
else
    say "cargo build --release -p vmdk-parse"
    (cd "$repo" && cargo build --release -p vmdk-parse --quiet) || die "cargo build failed"
    built=$repo/target/release/vmdk-parse
fi
# A private copy: other builds sharing target/ must not swap the binary in the middle of a run.
cp "$built" "$vp.tmp" && mv "$vp.tmp" "$vp"
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    rev="$rev+dirty"
fi

# --- Images (built once, reused while the parameters match) ----------------------------------

raw=$work/disk.raw
sparse=$work/sparse.vmdk
stream=$work/stream.vmdk
stamp=$work/images.stamp
want_stamp="data_mib=$data_mib disk_gib=$disk_gib"

stage_files() { # copy up to $data_mib MiB of regular files from /usr into $1
    local dest=$1 limit=$((data_mib * MIB)) total=0 size path
    rm -rf "$dest"
    mkdir -p "$dest"
    # Files over 64 MiB are skipped so that a few giants do not make up the whole gigabyte.
    find /usr/bin /usr/share /usr/lib -xdev -type f -size -65536k -readable -printf '%s\t%p\0' |
        while IFS=$'\t' read -r -d '' size path; do
            ((total + size <= limit)) || continue
            total=$((total + size))
            printf '%s\0' "${path#/}"
        done |
        tar -C / --null --no-recursion -T - -cf - | tar -C "$dest" -xf -
}

if [[ -f $stamp && $(<"$stamp") == "$want_stamp" && -f $raw && -f $sparse && -f $stream ]]; then
    say "reusing images in $work ($want_stamp)"
else
    rm -f "$stamp" "$raw" "$sparse" "$stream"
    say "staging ~$data_mib MiB of files from /usr"
    stage_files "$work/staging"
    say "mke2fs -t ext4 -d staging: ${disk_gib} GiB raw image"
    rm -f "$raw.tmp"
    truncate -s "${disk_gib}G" "$raw.tmp"
    mke2fs -q -F -t ext4 -L vmlbench -d "$work/staging" "$raw.tmp"
    mv "$raw.tmp" "$raw"
    say "qemu-img convert -O vmdk (monolithicSparse)"
    qemu-img convert -f raw -O vmdk "$raw" "$sparse.tmp" && mv "$sparse.tmp" "$sparse"
    say "qemu-img convert -O vmdk -o subformat=streamOptimized"
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$raw" "$stream.tmp"
    mv "$stream.tmp" "$stream"
    rm -rf "$work/staging"
    echo "$want_stamp" >"$stamp"
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
alloc_bytes() { stat -c '%b %B' "$1" | awk '{ printf "%.0f", $1 * $2 }'; }
raw_size=$(stat -c %s "$raw")

# --- Timing ------------------------------------------------------------------------------------

# timed STDOUT_FILE COMMAND...: run under /usr/bin/time -v; sets t_wall (s), t_rss (KiB),
# t_cpu (user + sys s) and t_status (the command's exit status).
timed() {
    local stdout=$1 tv=$work/time.txt
    shift
    t_status=0
    /usr/bin/time -v -o "$tv" -- "$@" >"$stdout" || t_status=$?
    read -r t_wall t_rss t_cpu < <(awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, a, ":"); s = 0
                                   for (i = 1; i <= n; i++) s = s * 60 + a[i]; wall = s }
        /User time/ { cpu += $2 } /System time/ { cpu += $2 }
        /Maximum resident set size/ { rss = $2 }
        END { printf "%.2f %d %.2f\n", wall, rss, cpu }' "$tv")
}

ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

declare -A times rss cpu alloc label
wrong=0
failures=()

# Contenders: key -> command line. OUT is the output path, filled in per run.
contenders=(sparse.vmdk-parse sparse.qemu-img sparse.vp-sync sparse.qemu-sync stream.vmdk-parse
    stream.qemu-img stream.vp-sync stream.qemu-sync raw.cat)
label=(
    [sparse.vmdk-parse]="vmdk-parse cat -o" [sparse.qemu-img]="qemu-img convert"
    [sparse.qemu-sync]="qemu-img convert + sync" [sparse.vp-sync]="vmdk-parse cat -o --sync"
    [stream.vmdk-parse]="vmdk-parse cat -o" [stream.qemu-img]="qemu-img convert"
    [stream.qemu-sync]="qemu-img convert + sync" [stream.vp-sync]="vmdk-parse cat -o --sync"
    [raw.cat]="cat raw > out"
)
input_of() {
    case $1 in
    sparse.*) echo "$sparse" ;;
    stream.*) echo "$stream" ;;
    raw.*) echo "$raw" ;;
    esac
}
# shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
qemu_sync='qemu-img convert -O raw "$1" "$2" && sync "$2"'
run_one() { # run_one KEY OUT
    local key=$1 o=$2 in
    in=$(input_of "$key")
    case $key in
    *.vmdk-parse) timed /dev/null "$vp" cat "$in" -o "$o" ;;
    *.vp-sync) timed /dev/null "$vp" cat --sync "$in" -o "$o" ;;
    *.qemu-img) timed /dev/null qemu-img convert -O raw "$in" "$o" ;;
    *.qemu-sync) timed /dev/null sh -c "$qemu_sync" sh "$in" "$o" ;;
    raw.cat) timed "$o" cat "$in" ;;
    esac
}

say "warming the page cache with the inputs (caches are never dropped)"
cat "$raw" "$sparse" "$stream" >/dev/null
sync
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

for ((r = 0; r < runs; r++)); do
    # Rotate the order each run, so no contender always runs right after the same neighbour.
    n=${#contenders[@]}
    for ((i = 0; i < n; i++)); do
        key=${contenders[(i + r) % n]}
        o=$out/$key.raw
        rm -f "$o"
        run_one "$key" "$o"
        if ((t_status != 0)); then
            failures+=("$key run $((r + 1)): exit status $t_status")
            wrong=1
            say "$key run $((r + 1)): FAILED (exit status $t_status)"
            continue
        fi
        if ! cmp -s "$o" "$raw"; then
            failures+=("$key run $((r + 1)): output differs from the raw image")
            wrong=1
            say "$key run $((r + 1)): output DIFFERS from the raw image"
        fi
        times[$key]+=" $t_wall"
        rss[$key]+=" $t_rss"
        cpu[$key]+=" $t_cpu"
        alloc[$key]=$(alloc_bytes "$o")
        say "$(printf '%-18s run %d/%d: %6.2f s  cpu %6.2f s  rss %5d MiB' "$key" $((r + 1)) "$runs" "$t_wall" "$t_cpu" $((t_rss / 1024)))"
        rm -f "$o"
        sync
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- The 3 TiB sparse disk -------------------------------------------------------------------

# Regions written into the big disk: offset, length, byte (octal, for tr). One is not aligned
# to grains (64 KiB) nor to 4 KiB blocks, so partial grains are exercised.
big_regions=(
    "0 $((2 * MIB)) 253"
    "$((BIG_BYTES / 2)) $MIB 132"
    "$((BIG_BYTES - 3 * MIB - 7 * 512)) $MIB 315"
)
big=$work/big.vmdk
big_stamp="big=$BIG_BYTES ${big_regions[*]}"
declare -A big_t big_rss big_note

# check_big OUT: 0 when OUT is 3 TiB, holds the written regions, and no data anywhere else.
check_big() {
    local o=$1 size off len oct lo hi s e ok
    size=$(stat -c %s "$o")
    if ((size != BIG_BYTES)); then
        say "$o: size $size, expected $BIG_BYTES"
        return 1
    fi
    # Every data extent of the output must lie inside a written region widened to its grains.
    local spans=()
    for reg in "${big_regions[@]}"; do
        read -r off len oct <<<"$reg"
        lo=$((off / 65536 * 65536))
        hi=$(((off + len + 65535) / 65536 * 65536))
        spans+=("$lo $hi")
        # The bytes of the widened span: zeros, the pattern, zeros.
        {
            head -c $((off - lo)) /dev/zero
            head -c "$len" /dev/zero | tr '\0' "\\$oct"
            head -c $((hi - off - len)) /dev/zero
        } >"$work/span.bin"
        if ! cmp -s -n $((hi - lo)) -i "$lo:0" "$o" "$work/span.bin"; then
            say "$o: bytes $lo..$hi differ from what was written"
            return 1
        fi
    done
    while read -r s e; do
        ok=0
        for sp in "${spans[@]}"; do
            read -r lo hi <<<"$sp"
            if ((s >= lo && e <= hi)); then ok=1; fi
        done
        if ((ok == 0)); then
            say "$o: data at bytes $s..$e where nothing was written"
            return 1
        fi
    done < <(qemu-img map -f raw --output=json "$o" |
        awk -F'[:,]' '/"data": true/ { for (i = 1; i < NF; i++) {
            if ($i ~ /"start"/) s = $(i + 1); if ($i ~ /"length"/) l = $(i + 1) }
            printf "%.0f %.0f\n", s, s + l }')
    return 0
}

if [[ $skip_big != 1 ]]; then
    if [[ ! -f $big || ! -f $work/big.stamp || $(<"$work/big.stamp") != "$big_stamp" ]]; then
        say "creating the 3 TiB monolithicSparse disk"
        rm -f "$big" "$work/big.stamp"
        qemu-img create -q -f vmdk "$big.tmp" "$BIG_BYTES"
        for reg in "${big_regions[@]}"; do
            read -r off len oct <<<"$reg"
            qemu-io -f vmdk -c "write -P 0$oct $off $len" "$big.tmp" >/dev/null
        done
        mv "$big.tmp" "$big"
        echo "$big_stamp" >"$work/big.stamp"
    fi
    cat "$big" >/dev/null
    big_out=$out/big.raw
    for what in info map cat qemu-img; do
        rm -f "$big_out"
        case $what in
        info | map) timed "$work/big.$what.json" timeout "$big_timeout" "$vp" "$what" "$big" ;;
        cat) timed /dev/null timeout "$big_timeout" "$vp" cat "$big" -o "$big_out" ;;
        qemu-img) timed /dev/null timeout "$big_timeout" qemu-img convert -O raw "$big" "$big_out" ;;
        esac
        big_t[$what]=$t_wall
        big_rss[$what]=$t_rss
        if ((t_status == 124)); then
            big_note[$what]="timed out after ${big_timeout} s"
            [[ $what == qemu-img ]] || wrong=1
            [[ $what == qemu-img ]] || failures+=("3 TiB $what: timed out")
        elif ((t_status != 0)); then
            big_note[$what]="exit status $t_status"
            wrong=1
            failures+=("3 TiB $what: exit status $t_status")
        else
            case $what in
            info)
                if grep -q "\"capacity_bytes\": $BIG_BYTES," "$work/big.info.json"; then
                    big_note[$what]="capacity_bytes = $BIG_BYTES"
                else
                    big_note[$what]="WRONG: capacity_bytes is not $BIG_BYTES"
                    wrong=1
                    failures+=("3 TiB info: wrong capacity")
                fi
                ;;
            map)
                data=$(awk -F'"length":' '/"state":"data"/ { split($2, a, ","); s += a[1] }
                    END { printf "%.0f", s }' "$work/big.map.json")
                big_note[$what]="$(wc -l <"$work/big.map.json") records, $(mib "$data") MiB data"
                ;;
            cat | qemu-img)
                a=$(alloc_bytes "$big_out")
                if check_big "$big_out"; then
                    big_note[$what]="output $(mib "$(stat -c %s "$big_out")") MiB virtual, $(mib "$a") MiB allocated, content ok"
                else
                    big_note[$what]="WRONG output ($(mib "$a") MiB allocated)"
                    wrong=1
                    failures+=("3 TiB $what: wrong output")
                fi
                ;;
            esac
        fi
        say "3 TiB $what: ${big_t[$what]} s, rss $((big_rss[$what] / 1024)) MiB, ${big_note[$what]}"
        rm -f "$big_out"
        sync
    done
fi

# --- Report ------------------------------------------------------------------------------------

verdict() { if "$@"; then echo PASS; else echo FAIL; fi; } # verdict TEST...: PASS or FAIL

cat_med=$(median "${times[raw.cat]:-}")
echo
echo "vmdk-parse benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $rev, $(nproc) cores, $(uname -r)"
qemu-img --version | head -n1
echo "disk: ext4 of $disk_gib GiB holding $data_mib MiB of files from /usr;" \
    "raw $(mib "$raw_size") MiB ($(mib "$(alloc_bytes "$raw")") MiB allocated)," \
    "monolithicSparse $(mib "$(stat -c %s "$sparse")") MiB, streamOptimized $(mib "$(stat -c %s "$stream")") MiB"
echo "median of $runs interleaved runs; page cache NOT dropped (inputs warm in memory, outputs"
echo "synced and deleted between runs); load average before $load_before, after $load_after"
echo "vs qemu = qemu-img convert time / this time; vs cat = cat raw time / this time (higher is faster)"
echo
printf '%-16s %-24s %8s %8s %8s %8s %8s %8s %s\n' format tool "median s" "best s" "cpu s" \
    "rss MiB" "vs qemu" "vs cat" "out MiB alloc"
declare -A ratio_q ratio_qs
for key in "${contenders[@]}"; do
    fmt=${key%%.*}
    case $fmt in
    sparse) fmtname=monolithicSparse ;;
    stream) fmtname=streamOptimized ;;
    raw) fmtname=raw ;;
    esac
    med=$(median "${times[$key]:-}")
    [[ -n $med ]] || {
        printf '%-16s %-24s %s\n' "$fmtname" "${label[$key]}" "no successful run"
        continue
    }
    vq=-
    vc=$(ratio "$cat_med" "$med")
    if [[ $key == *.vp-sync || $key == *.qemu-sync ]]; then
        # Durable copies are compared with the durable qemu-img run.
        vq=$(ratio "$(median "${times[$fmt.qemu-sync]:-}")" "$med")
    elif [[ $fmt != raw ]]; then
        vq=$(ratio "$(median "${times[$fmt.qemu-img]:-}")" "$med")
    fi
    case $key in
    *.vmdk-parse) ratio_q[$fmt]=$vq ;;
    *.vp-sync) ratio_qs[$fmt]=$vq ;;
    esac
    printf '%-16s %-24s %8.2f %8.2f %8.2f %8d %8s %8s %8d\n' "$fmtname" "${label[$key]}" "$med" \
        "$(best "${times[$key]}")" "$(median "${cpu[$key]}")" "$(($(maxof "${rss[$key]}") / 1024))" \
        "$vq" "$vc" "$(mib "${alloc[$key]}")"
done

our_rss=0
for key in sparse.vmdk-parse stream.vmdk-parse; do
    m=$(maxof "${rss[$key]:-0}")
    if ((m > our_rss)); then our_rss=$m; fi
done
for what in info map cat; do
    if ((${big_rss[$what]:-0} > our_rss)); then our_rss=${big_rss[$what]}; fi
done
our_rss_mib=$(awk -v k="$our_rss" 'BEGIN { printf "%.1f", k / 1024 }')

if [[ $skip_big != 1 ]]; then
    echo
    echo "3 TiB monolithicSparse disk, $(mib "$(stat -c %s "$big")") MiB file ($(mib "$(alloc_bytes "$big")") MiB allocated), 4 MiB written:"
    printf '%-26s %8s %8s  %s\n' command seconds "rss MiB" result
    for what in info map cat qemu-img; do
        case $what in
        qemu-img) cmd="qemu-img convert -O raw" ;;
        cat) cmd="vmdk-parse cat -o" ;;
        *) cmd="vmdk-parse $what" ;;
        esac
        printf '%-26s %8s %8d  %s\n' "$cmd" "${big_t[$what]}" $((big_rss[$what] / 1024)) "${big_note[$what]}"
    done
fi

echo
echo "Goals:"
v=$(verdict ge "${ratio_q[sparse]:-0}" "$GOAL_SPARSE")
echo "  $v  monolithicSparse >= ${GOAL_SPARSE}x qemu-img: ${ratio_q[sparse]:-?}x (--sync: ${ratio_qs[sparse]:-?}x against qemu-img + sync)"
v=$(verdict ge "${ratio_q[stream]:-0}" "$GOAL_STREAM")
echo "  $v  streamOptimized  >= ${GOAL_STREAM}x qemu-img: ${ratio_q[stream]:-?}x (--sync: ${ratio_qs[stream]:-?}x against qemu-img + sync)"
v=$(verdict test "$our_rss" -lt $((GOAL_RSS_MIB * 1024)))
echo "  $v  peak RSS < $GOAL_RSS_MIB MiB in every vmdk-parse run: $our_rss_mib MiB"
if [[ $skip_big != 1 ]]; then
    for what in info map cat; do
        v=$(verdict ge "$big_goal_s" "${big_t[$what]}")
        echo "  $v  3 TiB sparse disk: vmdk-parse $what within ${big_goal_s} s: ${big_t[$what]} s"
    done
fi
goals_missed=0
ge "${ratio_q[sparse]:-0}" "$GOAL_SPARSE" || goals_missed=$((goals_missed + 1))
ge "${ratio_q[stream]:-0}" "$GOAL_STREAM" || goals_missed=$((goals_missed + 1))
((our_rss < GOAL_RSS_MIB * 1024)) || goals_missed=$((goals_missed + 1))
if [[ $skip_big != 1 ]]; then
    for what in info map cat; do
        ge "$big_goal_s" "${big_t[$what]}" || goals_missed=$((goals_missed + 1))
    done
fi
if ((${#failures[@]})); then
    echo "  FAIL  correctness:"
    printf '          %s\n' "${failures[@]}"
else
    echo "  PASS  every output is byte-identical to the raw image"
fi

echo
echo "README snippet:"
echo
echo '### Latest figures'
echo
echo "\`scripts/bench-vmdk-parse.sh\`, $(date -u +%Y-%m-%d), commit $rev, $(nproc) cores; ext4 of" \
    "$disk_gib GiB holding $data_mib MiB of /usr; median of $runs warm-cache runs; output written" \
    "sparse, not fsynced (as qemu-img and cat); durable copies (\`--sync\` against qemu-img + sync)" \
    "in the last column."
echo
# shellcheck disable=SC2016 # backquotes are Markdown code spans
echo '| Disk | `vmdk-parse cat -o` | `qemu-img convert -O raw` | speed-up | `cat` of the raw image | peak RSS | speed-up, durable |'
echo '|---|---:|---:|---:|---:|---:|---:|'
for fmt in sparse stream; do
    case $fmt in
    sparse) f=$sparse n=monolithicSparse ;;
    stream) f=$stream n=streamOptimized ;;
    esac
    [[ -n ${times[$fmt.vmdk-parse]:-} && -n ${times[$fmt.qemu-img]:-} ]] || continue
    printf '| %s (%s MiB) | %s s | %s s | %sx | %s s | %d MiB | %sx |\n' "$n" "$(mib "$(stat -c %s "$f")")" \
        "$(median "${times[$fmt.vmdk-parse]}")" "$(median "${times[$fmt.qemu-img]}")" \
        "${ratio_q[$fmt]}" "$cat_med" "$(($(maxof "${rss[$fmt.vmdk-parse]}") / 1024))" "${ratio_qs[$fmt]:-?}"
done
if [[ $skip_big != 1 ]]; then
    q=${big_t[qemu-img]}
    [[ -z ${big_note[qemu-img]:-} || ${big_note[qemu-img]} != timed* ]] || q=">$big_timeout"
    # shellcheck disable=SC2016 # backquotes are Markdown code spans
    printf '| 3 TiB sparse, 4 MiB data | %s s (`info` %s s, `map` %s s) | %s s | %sx | - | %d MiB |\n' \
        "${big_t[cat]}" "${big_t[info]}" "${big_t[map]}" "$q" \
        "$(ratio "${big_t[qemu-img]}" "${big_t[cat]}")" $((big_rss[cat] / 1024))
fi

if ((wrong)); then
    echo
    echo "bench: FAILED: an output was wrong or a command failed (see above)" >&2
    exit 1
fi
if ((goals_missed)); then
    say "$goals_missed goal(s) missed (see Goals above)"
    ((strict == 0)) || exit 3
fi
exit 0
