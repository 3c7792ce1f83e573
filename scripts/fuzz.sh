#!/usr/bin/env bash
# A fuzz campaign: every fuzz target of the workspace, run with cargo-fuzz (libFuzzer) for a
# time each, seeded from real inputs, with a report of executions, coverage and findings.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  time per target (default 600)
#   TARGET   crate/target names to run (default all): vmdk-parse/open_disk,
#            vmdk-parse/descriptor, vmx-parse/parse, vdiff/decode, vdiff/index, vdiff/undo,
#            vrepo/repo_files
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`; installed
# here when missing), qemu-img, and a build of the workspace's binaries (made here).
# Seeds (CRATE/fuzz/corpus/TARGET, git-ignored; what the fuzzer finds is kept there for the
# next run): the VMware-written VMDKs of tests/fixtures/vmware and VMDKs of every subformat
# made by qemu-img, their descriptors, .vmx/.vmsd files, vdiff deltas between small images
# (with and without an index), and a small vrepo repository's entry.json, signature.zst
# (decompressed), journal-like and sealed files.
# Findings land in CRATE/fuzz/artifacts/TARGET/ (crash-*, oom-*, timeout-*, leak-*; slow-unit-*
# files are counted apart, for a look, not as findings; only a run's own files count); each
# found must be fixed and kept as a regression test. Exit 1 when any target found one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-600}
case "$secs" in
    '' | *[!0-9]*) echo "fuzz: SECONDS must be a number, not $secs" >&2; exit 2 ;;
esac
shift || true
all=(vmdk-parse/open_disk vmdk-parse/descriptor vmx-parse/parse vdiff/decode vdiff/index
    vdiff/undo vrepo/repo_files)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

say() { printf '== %s\n' "$*" >&2; }

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
say "building the tools (for the seeds)"
cargo build --release --bins

seed_dir() { # CRATE TARGET
    local d="$root/$1/fuzz/corpus/$2"
    mkdir -p "$d"
    printf '%s' "$d"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$root/target/release

say "making seeds"
# VMDKs: the real VMware files, and one of each subformat qemu-img writes (small).
vmdks=()
for f in tests/fixtures/vmware/*.vmdk; do vmdks+=("$f"); done
for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse streamOptimized; do
    qemu-img create -q -f vmdk -o "subformat=$sub" "$work/q-$sub.vmdk" 4M
    qemu-io -f vmdk -c "write -P 0x5a 65536 65536" "$work/q-$sub.vmdk" >/dev/null
    vmdks+=("$work/q-$sub.vmdk")
done
qemu-img create -q -f vmdk -b "$work/q-monolithicSparse.vmdk" -F vmdk "$work/q-child.vmdk"
vmdks+=("$work/q-child.vmdk")
d=$(seed_dir vmdk-parse open_disk)
for f in "${vmdks[@]}"; do
    # Sparse files hold mostly holes: the seed is the first 256 KiB (headers and tables).
    head -c 262144 "$f" >"$d/$(basename "$f")"
done
d=$(seed_dir vmdk-parse descriptor)
for f in "${vmdks[@]}"; do
    "$bin/vmdk-parse" descriptor "$f" >"$d/$(basename "$f").txt" 2>/dev/null || true
done
# VMX and VMSD files.
d=$(seed_dir vmx-parse parse)
cat >"$d/vm.vmx" <<'EOF'
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "seed"
guestOS = "otherlinux-64"
scsi0.present = "TRUE"
scsi0:0.fileName = "disk-000001.vmdk"
workingDir = "snapshots"
sharedFolder0.hostPath = "C:\Users\me"
EOF
printf '.encoding = "UTF-8"\r\nsnapshot.lastUID = "1"\r\nsnapshot0.uid = "1"\r\nsnapshot0.displayName = "before"\r\n' >"$d/vm.vmsd"
printf 'displayName = "cut \xe6\x97"\r\nsharedFolder0.hostPath = "no quote\r\n' >"$d/damaged.vmx"
# Deltas: small raw images, diffed with and without an index, and full.
head -c 3145728 /dev/urandom >"$work/a.raw"
cp "$work/a.raw" "$work/b.raw"
head -c 131072 /dev/urandom | dd of="$work/b.raw" bs=4096 seek=100 conv=notrunc 2>/dev/null
dd if=/dev/zero of="$work/b.raw" bs=4096 seek=300 count=16 conv=notrunc 2>/dev/null
d=$(seed_dir vdiff decode)
"$bin/vdiff" "$work/a.raw" "$work/b.raw" -o "$d/ab.vdelta"
"$bin/vdiff" --full "$work/b.raw" -o "$d/full.vdelta"
d=$(seed_dir vdiff index)
cp "$root/vdiff/fuzz/corpus/decode/"*.vdelta "$d/"
seed_dir vdiff undo >/dev/null
# A small repository's files.
d=$(seed_dir vrepo repo_files)
mkdir -p "$work/wa"
cp "${vmdks[0]}" "$work/wa/disk.vmdk"
sed 's/disk-000001.vmdk/disk.vmdk/; /workingDir/d' "$root/vmx-parse/fuzz/corpus/parse/vm.vmx" >"$work/wa/vm.vmx"
"$bin/vrepo" -r "$work/repo" init >/dev/null 2>&1
"$bin/vrepo" -r "$work/repo" save "$work/wa" >/dev/null 2>&1
"$bin/vrepo" -r "$work/repo" save "$work/wa" >/dev/null 2>&1
for e in E1 E2; do
    cp "$work/repo/entries/$e/entry.json" "$d/$e.entry.json"
    zstd -dqc "$work/repo/entries/$e/signature.zst" >"$d/$e.signature" 2>/dev/null || true
done
cp "$work/repo/last-entry" "$d/last-entry"
cp "$work/repo/workareas/"*.json "$d/" 2>/dev/null || true

# The campaign.
report=$work/report
: >"$report"
found=0
for t in "${targets[@]}"; do
    crate=${t%/*}
    name=${t#*/}
    if [ ! -f "$crate/fuzz/fuzz_targets/$name.rs" ]; then
        echo "fuzz: no target $t" >&2
        exit 2
    fi
    say "$t for $secs s"
    corpus=$(seed_dir "$crate" "$name")
    log=$work/$crate-$name.log
    status=0
    start=$work/$crate-$name.start
    : >"$start" # only artifacts newer than this are this run's
    (cd "$crate" && cargo +nightly fuzz run "$name" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 \
        -print_final_stats=1) >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corp=$(find "$corpus" -type f | wc -l)
    # crash-, oom-, timeout- and leak- files are findings; slow-unit- files (a unit over
    # libFuzzer's 10 s report threshold, under the 20 s timeout) are reported for a look:
    # on a busy machine they are often not slow when run alone.
    arts=$(find "$crate/fuzz/artifacts/$name" -type f -newer "$start" ! -name 'slow-unit-*' 2>/dev/null | wc -l)
    slow=$(find "$crate/fuzz/artifacts/$name" -type f -newer "$start" -name 'slow-unit-*' 2>/dev/null | wc -l)
    verdict=clean
    if [ "$slow" -gt 0 ]; then
        verdict="clean; $slow slow units in $crate/fuzz/artifacts/$name to time alone"
    fi
    if [ "$status" -ne 0 ] || [ "$arts" -gt 0 ]; then
        verdict="FOUND (exit $status, $arts artifacts in $crate/fuzz/artifacts/$name)"
        found=1
        grep -m3 -E 'ERROR|panicked|SUMMARY' "$log" >&2 || true
    fi
    printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" \
        "$corp" "$verdict" >>"$report"
done

echo
echo "Fuzzing, $secs s per target ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD)):"
echo
echo "| target | executions | coverage (edges) | features | corpus | findings |"
echo "|---|---:|---:|---:|---:|---|"
cat "$report"
exit "$found"
