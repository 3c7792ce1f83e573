#!/usr/bin/env bash
# Benchmark vrepo on S3-compatible object storage: a single-node Garage on loopback, against the
# same save to a local repository and against restic backing up to the same Garage.
# (`scripts/bench-vrepo.sh --s3` runs this.)
#
# The working area is bench-vrepo.sh's (its states wa0, wa1, wa2 in BENCH_WORK: a 2 GiB
# monolithicSparse VMDK of an ext4 file system of /usr files, a .vmx, a .nvram;
# BENCH_ONLY_STATES=1 scripts/bench-vrepo.sh makes them, and this script runs it when they are
# missing). Garage 2.5.0 comes from
# scripts/need-garage.sh (built once and cached), restic from Debian.
#
# BENCH_RUNS times, each with new repositories, interleaved: the working area takes state 0
# (full save) and then state 1 (incremental save), and each state is saved by
#   vrepo -r LOCAL save WA                       (a folder, on the same disk)
#   vrepo -r s3:http://127.0.0.1:PORT/B/vN save WA
#   restic -r s3:http://127.0.0.1:PORT/B/rN backup WA
# then the newest state is built into an empty folder by
#   vrepo -r s3:... build latest DIR,  restic -r s3:... restore latest --target DIR,
#   vrepo -r LOCAL build latest DIR  (for information)
# and every restored folder must hold the working area's files byte for byte. Medians of the
# runs; wall seconds and peak RSS from /usr/bin/time. The bytes an incremental save sends are
# the sum vrepo reports on stderr ("sent N bytes"), against the entry's stored size
# (`vrepo show --json`). Garage shares the machine's two cores with the client: on a real
# site it runs elsewhere.
#
# Goals (issue 17): save to S3 within 1.3x of the local save; at least 2x faster than restic
# (full and incremental); build from S3 at least 3x faster than restic's restore; bytes sent
# for an incremental save within 1.1x of its stored size; peak memory under 256 MiB for save
# and build.
#
# Usage: scripts/bench-s3.sh [--strict]
#   --strict   exit 3 when a goal is missed (default: report it, exit 0)
#
# Environment (default in brackets):
#   BENCH_WORK   bench-vrepo.sh's work folder, holding wa0 wa1 wa2 [REPO/bench-work/vrepo]
#   BENCH_RUNS   repetitions [3]
#   VML_GARAGE   the garage binary [what scripts/need-garage.sh --path names]
#
# Exit codes: 0 done, 1 a restored working area differs or a command failed, 2 usage or setup
# error, 3 a goal missed with --strict.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${BENCH_WORK:-$repo/bench-work/vrepo}
runs=${BENCH_RUNS:-3}
# shellcheck source=scripts/bench-lib.sh
source "$repo/scripts/bench-lib.sh"
bench_args "$@"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS: expected a positive integer, got '$runs'"
if [[ ! -f $work/wa0/bench.vmdk || ! -f $work/wa1/bench.vmdk ]]; then
    say "making the working-area states with scripts/bench-vrepo.sh (BENCH_ONLY_STATES=1)"
    BENCH_WORK=$work BENCH_ONLY_STATES=1 "$repo/scripts/bench-vrepo.sh" ||
        die "could not make the working-area states"
fi
need restic restic
need /usr/bin/time time
need curl curl
garage=${VML_GARAGE:-$("$repo/scripts/need-garage.sh" --path)} || die "Garage is missing (scripts/need-garage.sh)"

s3work=$work/s3
rm -rf "$s3work"
mkdir -p "$s3work/log" "$s3work/bin"
log=$s3work/log
say "cargo build --release -p vrepo"
(cd "$repo" && cargo build --release -p vrepo --quiet) || die "cargo build failed"
vr=$s3work/bin/vrepo
cp "$repo/target/release/vrepo" "$vr"

# A free loopback port.
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gdir=$s3work/garage
mkdir -p "$gdir/meta" "$gdir/data"
s3port=$(port)
rpcport=$(port)
cat >"$gdir/garage.toml" <<EOF
metadata_dir = "$gdir/meta"
data_dir = "$gdir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpcport"
rpc_public_addr = "127.0.0.1:$rpcport"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3port"
EOF
g() { "$garage" -c "$gdir/garage.toml" "$@"; }
say "starting Garage on 127.0.0.1:$s3port"
"$garage" -c "$gdir/garage.toml" server >"$log/garage.log" 2>&1 &
gpid=$!
trap 'kill "$gpid" 2>/dev/null || true' EXIT
node=
for _ in $(seq 100); do
    node=$(g status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -n1) && [[ -n $node ]] && break
    sleep 0.2
done
[[ -n $node ]] || die "Garage did not start ($log/garage.log)"
g layout assign -z dc1 -c 100G "$node" >/dev/null
g layout apply --version 1 >/dev/null
keyinfo=$(g key create bench)
AWS_ACCESS_KEY_ID=$(awk '/Key ID:/ { print $3 }' <<<"$keyinfo")
AWS_SECRET_ACCESS_KEY=$(awk '/Secret key:/ { print $3 }' <<<"$keyinfo")
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=garage
g bucket create vbench >/dev/null
g bucket allow --read --write --owner vbench --key bench >/dev/null
url=http://127.0.0.1:$s3port/vbench
export RESTIC_PASSWORD=bench

# timed NAME CMD...: run, record wall seconds and peak RSS (KiB) in $log/NAME.time.
timed() {
    local name=$1
    shift
    /usr/bin/time -f '%e %M' -o "$log/$name.time" "$@" >"$log/$name.out" 2>"$log/$name.err" ||
        {
            cat "$log/$name.err" >&2
            die "$name failed"
        }
}
wall() { cut -d' ' -f1 "$log/$1.time"; }
rss() { cut -d' ' -f2 "$log/$1.time"; }

# same DIR: DIR holds exactly the working area's files, byte for byte.
same() {
    local f
    [[ $(cd "$1" && find . -type f | sort) == $(cd "$wa" && find . -type f | sort) ]] || return 1
    while read -r f; do cmp -s "$wa/$f" "$1/$f" || return 1; done < <(cd "$wa" && find . -type f)
}

wa=$s3work/wa
declare -A series
addto() { series[$1]="${series[$1]:-} $2"; }
for r in $(seq "$runs"); do
    say "run $r of $runs"
    rm -rf "$wa" "$s3work/local"
    cp -a "$work/wa0" "$wa"
    "$vr" -r "$s3work/local" init 2>/dev/null
    "$vr" -r "s3:$url/v$r" init 2>/dev/null
    restic -r "s3:$url/r$r" init >/dev/null 2>&1 || die "restic init on Garage failed"
    for st in 0 1; do
        if ((st == 1)); then cp -a "$work/wa1/." "$wa/"; fi
        sync
        timed "local$st.$r" "$vr" -r "$s3work/local" save "$wa"
        sync
        timed "s3save$st.$r" "$vr" -r "s3:$url/v$r" save "$wa"
        sync
        timed "restic$st.$r" restic -r "s3:$url/r$r" backup "$wa"
        for k in local s3save restic; do
            addto "$k$st.wall" "$(wall "$k$st.$r")"
            addto "$k$st.rss" "$(rss "$k$st.$r")"
        done
    done
    sent=$(sed -n 's/^vrepo: sent \([0-9]*\) bytes.*/\1/p' "$log/s3save1.$r.err")
    stored=$("$vr" -r "s3:$url/v$r" --json show latest | python3 -c 'import json, sys; s = json.load(sys.stdin)["stored"]; print(sum(v["size"] for v in s.values()))')
    addto sent "$sent"
    addto stored "$stored"
    for k in s3build restore localbuild; do
        out=$s3work/out-$k
        rm -rf "$out"
        sync
        case $k in
        s3build) timed "$k.$r" "$vr" -r "s3:$url/v$r" build latest "$out" ;;
        restore) timed "$k.$r" restic -r "s3:$url/r$r" restore latest --target "$out" ;;
        localbuild) timed "$k.$r" "$vr" -r "$s3work/local" build latest "$out" ;;
        esac
        [[ $k == restore ]] && out=$out$wa
        same "$out" || {
            say "$k: the restored working area differs"
            exit 1
        }
        addto "$k.wall" "$(wall "$k.$r")"
        addto "$k.rss" "$(rss "$k.$r")"
        rm -rf "$s3work/out-$k"
    done
done

m() { median "${series[$1]}"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
missed=0
goal() { # goal TEXT OK
    if [[ $2 == 1 ]]; then echo "  met:    $1"; else
        echo "  MISSED: $1"
        missed=1
    fi
}
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }' && echo 1 || echo 0; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }' && echo 1 || echo 0; }
echo
echo "vrepo on S3 (single-node Garage $("$garage" --version 2>/dev/null | head -1 | awk '{print $2}'), $(git -C "$repo" rev-parse --short HEAD 2>/dev/null), $runs runs, medians; load: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-40s %9s %9s\n' "" seconds "peak MiB"
for row in "vrepo save full, local:local0" "vrepo save full, S3:s3save0" "restic backup full, S3:restic0" \
    "vrepo save incremental, local:local1" "vrepo save incremental, S3:s3save1" "restic backup incremental, S3:restic1" \
    "vrepo build, S3:s3build" "restic restore, S3:restore" "vrepo build, local:localbuild"; do
    printf '%-40s %9s %9s\n' "${row%%:*}" "$(m "${row#*:}.wall")" "$(mib "$(maxof "${series[${row#*:}.rss]}")")"
done
s_sent=$(m sent)
s_stored=$(m stored)
echo "incremental save: sent $s_sent bytes for an entry storing $s_stored bytes"
r_full=$(ratio "$(m s3save0.wall)" "$(m local0.wall)")
r_inc=$(ratio "$(m s3save1.wall)" "$(m local1.wall)")
x_full=$(ratio "$(m restic0.wall)" "$(m s3save0.wall)")
x_inc=$(ratio "$(m restic1.wall)" "$(m s3save1.wall)")
x_build=$(ratio "$(m restore.wall)" "$(m s3build.wall)")
r_sent=$(ratio "$s_sent" "$s_stored")
peak_save=$(mib "$(maxof "${series[s3save0.rss]} ${series[s3save1.rss]}")")
peak_build=$(mib "$(maxof "${series[s3build.rss]}")")
echo "goals:"
goal "full save to S3 within 1.3x of the local save: ${r_full}x" "$(le "$r_full" 1.3)"
goal "incremental save to S3 within 1.3x of the local save: ${r_inc}x" "$(le "$r_inc" 1.3)"
goal "full save at least 2x faster than restic to the same Garage: ${x_full}x" "$(ge "$x_full" 2)"
goal "incremental save at least 2x faster than restic: ${x_inc}x" "$(ge "$x_inc" 2)"
goal "build from S3 at least 3x faster than restic restore: ${x_build}x" "$(ge "$x_build" 3)"
goal "bytes sent for an incremental save within 1.1x of its stored size: ${r_sent}x" "$(le "$r_sent" 1.1)"
goal "peak memory of save under 256 MiB: $peak_save MiB" "$(le "$peak_save" 256)"
goal "peak memory of build under 256 MiB: $peak_build MiB" "$(le "$peak_build" 256)"
if ((missed && strict)); then exit 3; fi
