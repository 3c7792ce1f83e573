#!/usr/bin/env bash
# Benchmark a site's many VMs in one repository (issue 16): vrepo against restic and borg.
#
# The site: 8 VMs made from 2 templates of different contents. Template A is an ext4 file
# system holding files from /usr/lib, template B one holding files from /usr/share and
# /usr/include; each is a monolithicSparse VMDK (made by qemu-img) with a .vmx and an .nvram.
# Each template gets 3 VMware full clones: its folder copied and renamed (tmplA -> webA1,
# webA2, webA3; tmplB -> dbB1, dbB2, dbB3), the disk renamed to NAME.vmdk (the embedded
# descriptor's extent name rewritten, as `vmkfstools -E` does), the .nvram renamed (its bytes
# the template's, a few changed), and a .vmx of its own (displayName, uuid.bios,
# uuid.location, fileName, nvram). The 2 templates run as VMs too. Every VM then evolves
# differently over 3 nights: per night `debugfs -w` on a raw copy of its disk writes new files
# (churn percent of the data: a slice of /usr/lib files no other VM or night gets), deletes
# churn/2 percent of the template's files and rewrites as many others with a header line added
# (in groups of 16 neighbouring files, mostly of one folder, as a package upgrade or a log
# rotation touches them; a different set per VM and night); the raw states N-1 and N are
# compared in 64 KiB blocks and only the changed runs are written INTO THE SAME VMDK IN PLACE
# with `qemu-io -f vmdk FILE` (`write -s DATA OFF LEN`), as in bench-vrepo.sh; the .nvram gets
# a few bytes. Each VM's state after night N is kept as a reference folder (states/N/VM), and
# the night's qemu-io commands with their data (patches/VM.N); all of it is reused by later
# runs with the same settings.
#
# Each night the live site (site/VM, same paths every night) takes that night's state: night 1
# as fresh copies of the state folders, nights 2 and 3 by the cached qemu-io commands run in
# place on the live VMDKs (then the reference's embedded descriptor is written over the
# descriptor, whose CID qemu-io set at random) and the .nvram bytes copied; every file is then
# compared with the reference state. The disks and .nvram files are touched and synced, and
# then all 8 VM folders are saved into one repository per tool, the tools in an order rotated
# each night, each night timed as a whole. The site is read into the page cache before each
# tool: borg drops the files it reads from the page cache (posix_fadvise DONTNEED), which
# left the next tool reading the 5 GB from the disk (vrepo's nightly saves took twice as long).
#   vrepo    `vrepo -r R save site/VM -m "night N" --json`, BENCH_JOBS (2) at once (xargs -P).
#            The VM name is the folder's name. Night 1 runs in two phases: the 2 templates (in
#            parallel), then the 6 clones (2 at a time), so that each clone's first save finds
#            its template's entry and is based on it ("based on E1 of VM tmplA, 9x% shared").
#            Nights 2 and 3: all 8 in one pool, templates first.
#   restic   `restic -r R backup site/VM`, the same pools (restic takes shared locks for
#            backups); RESTIC_PASSWORD set, defaults otherwise (repository v2, compression auto).
#   borg     `borg create R::VM-nN VM` (from site/), one archive per VM per night, one at a time
#            (borg locks the repository exclusively); repository made with --encryption none,
#            defaults otherwise (lz4).
# Every job's wall time, peak RSS and CPU time come from /usr/bin/time (%e, %M: the "Maximum
# resident set size" of time -v, %U + %S). Repository sizes are `du -sb` after each night.
#
# Then every VM's newest state is built into an empty folder by each tool:
#   vrepo build VM:latest DIR (or, on a vrepo without selectors, the VM's newest entry found in
#   `vrepo --json list`), restic restore SNAP --target DIR (SNAP: the newest snapshot of that
#   folder in `restic snapshots --json`), borg extract R::VM-n3 (in DIR).
# For a clone (webA2) and a template (tmplB) this is timed 3 times (BENCH_RUNS), interleaved
# with the tool order rotated, and the median reported; the other 6 VMs are built once each.
# Every restored folder must hold exactly the VM folder's files, byte for byte (cmp): else the
# bench fails (exit 1).
#
# Prune check: `vrepo prune --keep-last 2` on a `cp -a` copy of the vrepo repository (every VM
# has 3 entries): from `vrepo --json list` before and after, every VM (`vm.name`, else the
# folder name of `source`) must have kept exactly its own 2 newest entries (by `time`, then
# number) and no other; the kept entries of webA2 and tmplB (nights 2 and 3, known from the
# entries' messages) are built and compared with the reference states byte for byte. Any
# mismatch fails the bench (exit 1).
#
# The limit: what any tool must store at least, roughly: each template's raw disk compressed
# with `zstd -1` (zeros and holes cost next to nothing), plus for each VM and night the bytes of
# the changed 64 KiB runs written into its VMDK, compressed with `zstd -1` (concatenated per VM
# and night), plus the .vmx files and the templates' .nvram files compressed. (zstd -3 figures
# are given for information.)
#
# Goals (issue 16): vrepo repository <= 1.2x the limit and <= 0.8x restic's after 3 nights;
# restic's night save >= 4x vrepo's time on nights 2 and 3 (the nightly incremental saves;
# night 1, first saves of every VM, is reported for information); restic restore >= 3x vrepo
# build's time for the clone and the template; vrepo peak RSS < 256 MiB (every save, build and
# the prune).
#
# Cost at the defaults on 2 cores: about 9 minutes to make the states (once), 7 more for the
# rest; about 25 GiB under BENCH_WORK (13 GiB of states, the live site, the repositories).
# BENCH_SMALL=1 takes about 1.5 minutes.
#
# Usage: scripts/bench-site.sh [--strict]
#   --strict   exit 3 when a goal is missed (default: report it, exit 0)
#
# Environment (default in brackets; BENCH_SMALL=1 changes the defaults to [small ones]):
#   BENCH_WORK       work folder; states, patches and limits are kept there and reused
#                    [REPO/bench-work/site]
#   BENCH_SMALL      1: a quick run: smaller disks and data [0]
#   BENCH_DATA_MIB   MiB of files in each template's file system [512] [48]
#   BENCH_DISK_MIB   each disk's virtual size, MiB [1536] [256]
#   BENCH_CHURN_PCT  per VM and night: new files of this percent of the data, and this percent
#                    of the files deleted or rewritten (1-30) [3]
#   BENCH_RUNS       timed build repetitions [3]
#   BENCH_JOBS       parallel saves for vrepo and restic [2]
#   BENCH_SKIP_BORG  1: leave borg out [0]
#   BENCH_VREPO      a vrepo binary to use instead of building target/release/vrepo []
#
# Exit codes: 0 done, 1 a restored folder differs or the prune check failed (a wrong entry
# kept or removed, a kept entry not building to its state), 2 usage or setup error or a failed
# save, 3 a goal missed with --strict.
set -euo pipefail

readonly MIB=$((1024 * 1024))
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
small=${BENCH_SMALL:-0}
if [[ $small == 1 ]]; then d_data=48 d_disk=256; else d_data=512 d_disk=1536; fi
work=${BENCH_WORK:-$repo/bench-work/site}
data_mib=${BENCH_DATA_MIB:-$d_data}
disk_mib=${BENCH_DISK_MIB:-$d_disk}
churn=${BENCH_CHURN_PCT:-3}
runs=${BENCH_RUNS:-3}
jobs=${BENCH_JOBS:-2}
skip_borg=${BENCH_SKIP_BORG:-0}
vrepo_bin=${BENCH_VREPO:-}
# shellcheck source=scripts/bench-lib.sh disable=SC1091 # followed with shellcheck -x
source "$repo/scripts/bench-lib.sh"
bench_args "$@"
for n in "$data_mib" "$disk_mib" "$churn" "$runs" "$jobs"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done
((churn <= 30)) || die "BENCH_CHURN_PCT must be at most 30, got $churn"
((disk_mib >= data_mib * 3 / 2 + 64)) || die "BENCH_DISK_MIB ($disk_mib) is too small for BENCH_DATA_MIB ($data_mib): give at least 1.5x + 64"

need mke2fs e2fsprogs
need debugfs e2fsprogs
need qemu-img qemu-utils
need qemu-io qemu-utils
need /usr/bin/time time
need cmp diffutils
need python3 python3
need zstd zstd
need xargs findutils
need restic restic
[[ $skip_borg == 1 ]] || need borg borgbackup

mkdir -p "$work/bin" "$work/log"
work=$(cd "$work" && pwd)
log=$work/log
rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
vr=$work/bin/vrepo
if [[ -n $vrepo_bin ]]; then
    [[ -x $vrepo_bin ]] || die "BENCH_VREPO=$vrepo_bin is not an executable"
    cp "$vrepo_bin" "$vr.tmp" && mv "$vr.tmp" "$vr"
    rev="$rev, vrepo from $vrepo_bin"
else
    command -v cargo >/dev/null || die "cargo is missing (install Rust: https://rustup.rs)"
    say "cargo build --release -p vrepo"
    (cd "$repo" && cargo build --release -p vrepo --quiet) || die "cargo build failed"
    # A private copy: other builds sharing target/ must not swap the binary in the middle of a run.
    cp "$repo/target/release/vrepo" "$vr.tmp" && mv "$vr.tmp" "$vr"
fi

# The site: family A (template and its clones), then family B. A VM's index in its family
# picks which files it deletes and rewrites.
vms_a=(tmplA webA1 webA2 webA3)
vms_b=(tmplB dbB1 dbB2 dbB3)
vms=("${vms_a[@]}" "${vms_b[@]}")
templates=(tmplA tmplB)
clones=(webA1 webA2 webA3 dbB1 dbB2 dbB3)
build_vms=(webA2 tmplB) # timed builds: a clone and a template
family() { [[ $1 == *A* ]] && echo A || echo B; }
vmindex() {
    local i
    for i in 0 1 2 3; do
        [[ ${vms_a[i]} == "$1" || ${vms_b[i]} == "$1" ]] && echo "$i" && return
    done
}

# py MODE ARGS...: the helpers that need lists, hashes or byte-wise comparisons.
#   plan DIR DATA_MIB NEW_KIB VM...  file lists (NUL-separated, relative to /): DIR/A.list (from
#                         /usr/lib), DIR/B.list (/usr/share, /usr/include), DIR/new-VM-N.list
#                         for each VM and night 1-3 (other /usr/lib files, NEW_KIB each); files
#                         in the order of a hash of their path; names with blanks, quotes or
#                         backslashes left out (debugfs commands name them)
#   ranges OLD NEW DIR    qemu-io commands (on stdout) writing NEW's 64 KiB blocks that differ
#                         from OLD's, adjacent ones merged into one run; run i's bytes in DIR/i
#                         (the commands name them relative to DIR: run qemu-io there)
#   rename VMDK OLD NEW   the embedded descriptor's extent name OLD replaced by NEW, in place
#   descriptor SRC DST    SRC's embedded descriptor written over DST's (same place and size)
#   latest LIST VM        the newest entry of VM in LIST (`vrepo --json list` output)
#   entries LIST          one line per entry: VM NAME NUMBER MODE PARENT MESSAGE-NIGHT
#                         DELTA-BYTES BASED-ON (vm/entry/percent or -)
#   prunecheck BEFORE AFTER KEEP   each VM kept exactly its KEEP newest entries: one line per
#                         VM; exit 1 on a mismatch
#   snapshot JSON PATH    the id of the newest restic snapshot of exactly PATH
py() {
    python3 - "$@" <<'PY'
import hashlib, json, os, stat, sys
B = 65536
mode, args = sys.argv[1], sys.argv[2:]

def entries(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            e = json.loads(line)
            vm = (e.get("vm") or {}).get("name") or os.path.basename(e["source"].rstrip("/"))
            out.append((vm, e))
    return out

def order(e):
    return (e["time"], e["number"])

if mode == "plan":
    d, data_mib, new_kib, vms = args[0], int(args[1]), int(args[2]), args[3:]
    bad = set(' \t\n\r"\'\\')
    def walk(tops, cap):
        files = []
        for top in tops:
            dev = os.lstat(top).st_dev
            for root, dirs, names in os.walk(top):
                dirs[:] = [x for x in dirs if os.lstat(os.path.join(root, x)).st_dev == dev]
                for n in names:
                    p = os.path.join(root, n)
                    if bad & set(p):
                        continue
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size > cap:
                        continue
                    if not os.access(p, os.R_OK):
                        continue
                    files.append((hashlib.sha1(p.encode()).hexdigest(), p, st.st_size))
        files.sort()
        return files
    def fill(files, limit):
        got, rest, total = [], [], 0
        for f in files:
            if total + f[2] <= limit:
                got.append(f)
                total += f[2]
            else:
                rest.append(f)
        return got, rest
    def write(name, files):
        with open(os.path.join(d, name), "wb") as out:
            for f in files:
                out.write(f[1].lstrip("/").encode() + b"\0")
    os.makedirs(d, exist_ok=True)
    lib = walk(["/usr/lib"], 32 << 20)
    a, rest = fill(lib, data_mib << 20)
    b, _ = fill(walk(["/usr/share", "/usr/include"], 32 << 20), data_mib << 20)
    write("A.list", a)
    write("B.list", b)
    # New data: the rest of /usr/lib, files of at most half a slice, cut into slices in order.
    slice_bytes = new_kib << 10
    pool = [f for f in rest if f[2] <= max(slice_bytes // 2, 4096)]
    sizes = []
    for vm in vms:
        for n in (1, 2, 3):
            got, total = [], 0
            while pool and total < slice_bytes:
                f = pool.pop(0)
                got.append(f)
                total += f[2]
            if total < slice_bytes // 2:
                sys.exit(f"plan: not enough files in /usr/lib for the new data of {vm}, night {n}")
            write(f"new-{vm}-{n}.list", got)
            sizes.append(total)
    print(sum(f[2] for f in a), sum(f[2] for f in b), sum(sizes))
elif mode == "ranges":
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
        with open(os.path.join(d, str(i)), "wb") as f:
            f.write(data)
        print(f"write -q -s {i} {start} {len(data)}")
elif mode == "rename":
    path, old, new = args
    with open(path, "r+b") as f:
        h = f.read(512)
        if h[:4] != b"KDMV":
            sys.exit(f"{path}: not a monolithicSparse VMDK")
        off, size = int.from_bytes(h[28:36], "little"), int.from_bytes(h[36:44], "little")
        f.seek(off * 512)
        desc = f.read(size * 512)
        text = desc.rstrip(b"\0")
        was = b'"' + old.encode() + b'"'
        if text.count(was) != 1:
            sys.exit(f"{path}: the descriptor does not name {old} once")
        text = text.replace(was, b'"' + new.encode() + b'"')
        if len(text) > len(desc):
            sys.exit(f"{path}: the new descriptor does not fit")
        f.seek(off * 512)
        f.write(text + b"\0" * (len(desc) - len(text)))
elif mode == "descriptor":
    src, dst = args
    with open(src, "rb") as f:
        h = f.read(512)
        off, size = int.from_bytes(h[28:36], "little"), int.from_bytes(h[36:44], "little")
        f.seek(off * 512)
        desc = f.read(size * 512)
    with open(dst, "r+b") as f:
        if f.read(512)[28:44] != h[28:44]:
            sys.exit(f"{dst}: its descriptor is not where {src}'s is")
        f.seek(off * 512)
        f.write(desc)
elif mode == "latest":
    lst, vm = args
    mine = [e for v, e in entries(lst) if v == vm]
    if not mine:
        sys.exit(f"no entry of VM {vm}")
    print(max(mine, key=lambda e: e["number"])["name"])
elif mode == "entries":
    for vm, e in entries(args[0]):
        msg = e.get("message") or ""
        night = msg.split()[-1] if msg.startswith("night ") else "-"
        b = e.get("based_on")
        based = f"{b['vm']}/{b['entry']}/{b['shared_percent']:.1f}%" if b else "-"
        print(vm, e["name"], e["number"], e["mode"], e.get("parent") or "-", night,
              e["stored"]["delta"]["size"], based)
elif mode == "prunecheck":
    before, after, keep = entries(args[0]), entries(args[1]), int(args[2])
    want, got = {}, {}
    for vm, e in sorted(before, key=lambda x: order(x[1])):
        want.setdefault(vm, []).append(e["name"])
    for vm, e in after:
        got.setdefault(vm, set()).add(e["name"])
    ok = True
    for vm in sorted(set(want) | set(got)):
        w = set(want.get(vm, [])[-keep:])
        g = got.get(vm, set())
        good = w == g
        ok &= good
        print(f"{vm}: kept {' '.join(sorted(g, key=lambda x: int(x[1:]))) or 'nothing'}"
              f" (want {' '.join(sorted(w, key=lambda x: int(x[1:])))}): {'ok' if good else 'WRONG'}")
    sys.exit(0 if ok else 1)
elif mode == "snapshot":
    snaps, path = json.load(open(args[0])), args[1]
    mine = [s for s in snaps if s.get("paths") == [path]]
    if not mine:
        sys.exit(f"no restic snapshot of {path}")
    print(max(mine, key=lambda s: s["time"])["id"])
PY
}

# --- The site's states -------------------------------------------------------------------------

gen=$work/gen
states=$work/states
patches=$work/patches
stamp=$work/states.stamp
want_stamp="v2 data_mib=$data_mib disk_mib=$disk_mib churn=$churn"
new_kib=$((data_mib * 1024 * churn / 100))

write_vmx() { # write_vmx VM FAMILY
    local vm=$1 h guest=debian12-64 u
    [[ $2 == B ]] && guest=ubuntu-64
    h=$(printf '%s' "$vm" | md5sum | cut -c1-32 | sed 's/../& /g')
    u="56 4d ${h:0:17}-${h:18:23}"
    u=${u% }
    cat <<VMX
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "$vm"
guestOS = "$guest"
memSize = "2048"
numvcpus = "2"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "$vm.vmdk"
nvram = "$vm.nvram"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.addressType = "generated"
uuid.bios = "$u"
uuid.location = "$u"
VMX
}

# evolve VM N FAMILY INDEX: raw state N of VM ($gen/VM.raw.new) from state N-1 ($gen/VM.raw)
# with debugfs -w: the night's new files written to /night-N; the template's files, in path
# order, taken in groups of 16 (neighbours: mostly one folder, as a package upgrade or a log
# rotation touches them), and every (100/churn)th group (residue INDEX*3 + N-1) deleted, every
# other one of those rewritten with a header line added to each file.
evolve() {
    local vm=$1 n=$2 fam=$3 idx=$4 cmds=$gen/debugfs.cmds step=$((100 / churn)) i=0 j=0 g f rel dir mod res
    res=$(((idx * 3 + n - 1) % step))
    rm -rf "$gen/new" "$gen/mod"
    mkdir -p "$gen/new" "$gen/mod"
    tar -C / --null --no-recursion -T "$gen/lists/new-$vm-$n.list" -cf - | tar -C "$gen/new" -xf -
    cp --sparse=always "$gen/$vm.raw" "$gen/$vm.raw.new"
    printf 'mkdir /night-%d\ncd /night-%d\n' "$n" "$n" >"$cmds"
    while IFS= read -r -d '' f; do
        i=$((i + 1))
        echo "write \"$f\" f$i" >>"$cmds"
    done < <(find "$gen/new" -type f -print0 | sort -z)
    while IFS= read -r -d '' rel; do
        j=$((j + 1))
        g=$((j / 16))
        ((g % step == res)) || continue
        dir=${rel%/*}
        echo "cd \"/$dir\"" >>"$cmds"
        echo "rm \"${rel##*/}\"" >>"$cmds"
        if (((g / step) % 2 == 0)); then
            mod=$gen/mod/$j
            { printf 'rewritten on %s, night %d, file %d\n' "$vm" "$n" "$j"; cat "$gen/staging-$fam/$rel"; } >"$mod"
            echo "write \"$mod\" \"${rel##*/}\"" >>"$cmds"
        fi
    done <"$gen/$fam.files"
    debugfs -w -f "$cmds" "$gen/$vm.raw.new" >/dev/null 2>"$log/debugfs-$vm-$n.log" || die "debugfs failed (see $log/debugfs-$vm-$n.log)"
}

# inplace VMDK PATCH: run PATCH/cmds with qemu-io on VMDK, in place (in PATCH: the commands name
# their data relative to it).
inplace() {
    (cd "$2/data" && qemu-io -f vmdk "$1" <"$2/cmds") >"$log/qemu-io.log" 2>&1 ||
        die "qemu-io on $1 failed: $(tail -n3 "$log/qemu-io.log")"
}

zsize() { zstd "-$1" -T0 -q -c | wc -c; } # zsize LEVEL: compressed size of stdin

generate() {
    local fam vm n prev idx plan sizes t
    rm -rf "$stamp" "$gen" "$states" "$patches" "$work/limit.txt" "$work/layout.txt"
    mkdir -p "$gen" "$states" "$patches"
    say "planning: $data_mib MiB of files per template, $new_kib KiB of new files per VM and night"
    plan=$(py plan "$gen/lists" "$data_mib" "$new_kib" "${vms[@]}") || die "planning the files failed"
    read -r -a sizes <<<"$plan"
    : >"$work/layout.txt"
    : >"$work/limit.txt"
    printf 'template A: %s MiB of files from /usr/lib; template B: %s MiB from /usr/share and /usr/include; new files: %s MiB in all (%s KiB per VM and night)\n' \
        "$((sizes[0] / MIB))" "$((sizes[1] / MIB))" "$((sizes[2] / MIB))" "$new_kib" >>"$work/layout.txt"
    for fam in A B; do
        t=tmpl$fam
        say "template $fam: staging, mke2fs -t ext4 -d (${disk_mib} MiB), qemu-img convert -O vmdk"
        mkdir -p "$gen/staging-$fam"
        tar -C / --null --no-recursion -T "$gen/lists/$fam.list" -cf - | tar -C "$gen/staging-$fam" -xf -
        (cd "$gen/staging-$fam" && find . -type f -printf '%P\0' | sort -z) >"$gen/$fam.files"
        truncate -s "${disk_mib}M" "$gen/base-$t.raw"
        mke2fs -q -F -t ext4 -L "$t" -d "$gen/staging-$fam" "$gen/base-$t.raw"
        mkdir -p "$gen/base-$t"
        qemu-img convert -f raw -O vmdk -o adapter_type=lsilogic "$gen/base-$t.raw" "$gen/base-$t/$t.vmdk"
        write_vmx "$t" "$fam" >"$gen/base-$t/$t.vmx"
        head -c 270336 /dev/urandom >"$gen/base-$t/$t.nvram"
        printf 'base %s %s %s %s\n' "$t" "$(zsize 1 <"$gen/base-$t.raw")" "$(zsize 3 <"$gen/base-$t.raw")" \
            "$(du -B1 "$gen/base-$t.raw" | cut -f1)" >>"$work/limit.txt"
    done
    for vm in "${vms[@]}"; do
        fam=$(family "$vm")
        idx=$(vmindex "$vm")
        t=tmpl$fam
        if [[ $vm != "$t" ]]; then
            # A full clone: the template's folder copied, the files renamed, a .vmx of its own.
            say "$vm: a full clone of $t"
            mkdir -p "$gen/base-$vm"
            cp --sparse=always "$gen/base-$t/$t.vmdk" "$gen/base-$vm/$vm.vmdk"
            py rename "$gen/base-$vm/$vm.vmdk" "$t.vmdk" "$vm.vmdk" || die "renaming the disk of $vm failed"
            cp "$gen/base-$t/$t.nvram" "$gen/base-$vm/$vm.nvram"
            printf 'nvram of %s' "$vm" | dd of="$gen/base-$vm/$vm.nvram" bs=1 seek=2048 conv=notrunc status=none
            write_vmx "$vm" "$fam" >"$gen/base-$vm/$vm.vmx"
        fi
        cp --sparse=always "$gen/base-$t.raw" "$gen/$vm.raw"
        for n in 1 2 3; do
            say "$vm, night $n: debugfs -w ($new_kib KiB new, $churn% of the files deleted or rewritten), changed grains written in place"
            evolve "$vm" "$n" "$fam" "$idx"
            prev=$states/$((n - 1))/$vm
            ((n > 1)) || prev=$gen/base-$vm
            rm -rf "$patches/$vm.$n" "$states/$n/$vm.tmp"
            mkdir -p "$patches/$vm.$n" "$states/$n"
            py ranges "$gen/$vm.raw" "$gen/$vm.raw.new" "$patches/$vm.$n/data" >"$patches/$vm.$n/cmds"
            cp -a "$prev" "$states/$n/$vm.tmp"
            inplace "$states/$n/$vm.tmp/$vm.vmdk" "$patches/$vm.$n"
            qemu-img compare -q -f raw -F vmdk "$gen/$vm.raw.new" "$states/$n/$vm.tmp/$vm.vmdk" ||
                die "$vm, night $n: the VMDK written in place differs from the raw image"
            # The firmware changes a few bytes of its nvram too.
            printf '%s night %d' "$vm" "$n" | dd of="$states/$n/$vm.tmp/$vm.nvram" bs=1 seek=$((4096 * n)) conv=notrunc status=none
            mv "$gen/$vm.raw.new" "$gen/$vm.raw"
            printf 'change %s %s %s %s %s\n' "$vm" "$n" \
                "$(sed 's/^write -q -s \([0-9]*\) .*/\1/' "$patches/$vm.$n/cmds" | (cd "$patches/$vm.$n/data" && xargs -r cat) | zsize 1)" \
                "$(sed 's/^write -q -s \([0-9]*\) .*/\1/' "$patches/$vm.$n/cmds" | (cd "$patches/$vm.$n/data" && xargs -r cat) | zsize 3)" \
                "$(awk '{ s += $6 } END { print s + 0 }' "$patches/$vm.$n/cmds")" >>"$work/limit.txt"
            printf '%s night %d: %d runs written in place, %s MiB of grains; VMDK %s -> %s MiB\n' "$vm" "$n" \
                "$(wc -l <"$patches/$vm.$n/cmds")" "$(awk '{ s += $6 } END { printf "%.1f", s / 1048576 }' "$patches/$vm.$n/cmds")" \
                "$(awk -v b="$(stat -c %s "$prev/$vm.vmdk")" 'BEGIN { printf "%.1f", b / 1048576 }')" \
                "$(awk -v b="$(stat -c %s "$states/$n/$vm.tmp/$vm.vmdk")" 'BEGIN { printf "%.1f", b / 1048576 }')" >>"$work/layout.txt"
            mv "$states/$n/$vm.tmp" "$states/$n/$vm"
        done
        rm -f "$gen/$vm.raw"
    done
    # The small files: every .vmx and the templates' .nvram (the clones' are the templates').
    printf 'other - %s %s %s\n' "$(cat "$states"/1/*/*.vmx "$states"/1/tmpl*/*.nvram | zsize 1)" \
        "$(cat "$states"/1/*/*.vmx "$states"/1/tmpl*/*.nvram | zsize 3)" \
        "$(cat "$states"/1/*/*.vmx "$states"/1/tmpl*/*.nvram | wc -c)" >>"$work/limit.txt"
    rm -rf "$gen"
    echo "$want_stamp" >"$stamp"
}

complete_states() {
    local n vm
    [[ -f $stamp && $(<"$stamp") == "$want_stamp" && -f $work/limit.txt ]] || return 1
    for n in 1 2 3; do
        for vm in "${vms[@]}"; do
            [[ -f $states/$n/$vm/$vm.vmdk && -f $patches/$vm.$n/cmds ]] || return 1
        done
    done
}

if complete_states; then
    say "reusing the site's states in $work ($want_stamp)"
else
    generate
fi
cat "$work/layout.txt" >&2

# --- Timing ------------------------------------------------------------------------------------

# timed NAME COMMAND...: wall seconds and peak RSS (KiB) into wall[NAME] and rss[NAME]; a
# failure is fatal. try_timed: the same, returning the command's status.
declare -A wall rss
try_timed() {
    local name=$1 status=0
    shift
    /usr/bin/time -f '%e %M' -o "$work/time.txt" -- "$@" >"$log/$name.out" 2>"$log/$name.err" || status=$?
    read -r "wall[$name]" "rss[$name]" < <(tail -n1 "$work/time.txt")
    return "$status"
}
timed() {
    local status=0
    try_timed "$@" || status=$?
    ((status == 0)) || die "$1 failed (exit $status): ${*:2} : $(tail -n5 "$log/$1.err")"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
kib2mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
wrong=0
# check_tree NAME GOT WANT: GOT must hold exactly WANT's files and folders, byte for byte.
check_tree() {
    local name=$1 got=$2 want=$3 f
    if [[ ! -d $got ]] || ! diff <(cd "$want" && find . -mindepth 1 -printf '%y %P\n' | sort) \
        <(cd "$got" && find . -mindepth 1 -printf '%y %P\n' | sort) >"$log/$name.tree-diff"; then
        say "WRONG: $name: the restored files are not the VM folder's (see $log/$name.tree-diff)"
        wrong=1
        return
    fi
    while IFS= read -r -d '' f; do
        if ! cmp -s "$want/$f" "$got/$f"; then
            say "WRONG: $name: $f differs from the VM folder's"
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

repos=$work/repos
site=$work/site
dest=$work/dest
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/cache/restic
export BORG_BASE_DIR=$work/cache/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

tools=(vrepo restic)
[[ $skip_borg == 1 ]] || tools+=(borg)

rm -rf "$repos" "$site" "$dest" "$work/cache" "$work/prune" "$log"/n[0-9]-*
mkdir -p "$repos" "$work/cache" "$site"
"$vr" -r "$repos/vrepo" init >"$log/vrepo-init.log" 2>&1 || die "vrepo init failed: $(tail -n3 "$log/vrepo-init.log")"
restic -r "$repos/restic" init >"$log/restic-init.log" 2>&1 || die "restic init failed: $(tail -n3 "$log/restic-init.log")"
if [[ $skip_borg != 1 ]]; then
    borg init --encryption none "$repos/borg" >"$log/borg-init.log" 2>&1 || die "borg init failed: $(tail -n3 "$log/borg-init.log")"
fi

# --- The nights --------------------------------------------------------------------------------

# job TOOL NIGHT VM: one save of site/VM; its wall seconds, peak RSS (KiB), user and system CPU
# seconds in log/nN-TOOL-VM.time.
# shellcheck disable=SC2317 # run by xargs, through bash -c
job() {
    local t=$1 n=$2 vm=$3 base=$log/n$2-$1-$3 cmd
    case $t in
    vrepo) cmd=("$vr" -r "$repos/vrepo" save "$site/$vm" -m "night $n" --json) ;;
    restic) cmd=(restic -r "$repos/restic" backup "$site/$vm") ;;
    borg) cmd=(env -C "$site" borg create "$repos/borg::$vm-n$n" "$vm") ;;
    esac
    /usr/bin/time -f '%e %M %U %S' -o "$base.time" -- "${cmd[@]}" >"$base.out" 2>"$base.err"
}
export -f job
export vr repos site log

# pool TOOL NIGHT P VM...: the saves of the VMs, P at a time, in the order given.
pool() {
    local t=$1 n=$2 p=$3
    shift 3
    printf '%s\0' "$@" | xargs -0 -n 1 -P "$p" bash -c 'job "$@"' _ "$t" "$n" ||
        die "night $n: a $t save failed: $(for vm in "$@"; do tail -n2 "$log/n$n-$t-$vm.err"; done)"
}

# site_night N: the live site takes night N's state (see the header).
site_night() {
    local n=$1 vm f
    for vm in "${vms[@]}"; do
        if ((n == 1)); then
            rm -rf "${site:?}/$vm"
            cp -a "$states/1/$vm" "$site/$vm"
        else
            inplace "$site/$vm/$vm.vmdk" "$patches/$vm.$n"
            # qemu-io gave the disk a random CID: the reference's descriptor is written over it.
            py descriptor "$states/$n/$vm/$vm.vmdk" "$site/$vm/$vm.vmdk" || die "copying the descriptor of $vm failed"
            cp "$states/$n/$vm/$vm.nvram" "$site/$vm/$vm.nvram"
            for f in "$site/$vm"/*; do
                if ! cmp -s "$f" "$states/$n/$vm/${f##*/}"; then
                    die "night $n: $f is not the reference state's after the in-place writes"
                fi
            done
        fi
        touch "$site/$vm/$vm.vmdk" "$site/$vm/$vm.nvram"
    done
    sync
}

declare -A night size cpu
for n in 1 2 3; do
    say "night $n: the site takes its state"
    site_night "$n"
    for ((k = 0; k < ${#tools[@]}; k++)); do
        t=${tools[(k + n - 1) % ${#tools[@]}]}
        # Every tool reads the site from the page cache: borg drops what it read from it.
        cat "$site"/*/* >/dev/null
        say "night $n: $t"
        p=$jobs
        [[ $t == borg ]] && p=1
        start=$EPOCHREALTIME
        if ((n == 1)); then
            pool "$t" "$n" "$p" "${templates[@]}"
            pool "$t" "$n" "$p" "${clones[@]}"
        else
            pool "$t" "$n" "$p" "${templates[@]}" "${clones[@]}"
        fi
        night[$t-$n]=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
        cpu[$t-$n]=0
        for vm in "${vms[@]}"; do
            read -r "wall[$t-$n-$vm]" "rss[$t-$n-$vm]" user sys < <(tail -n1 "$log/n$n-$t-$vm.time")
            cpu[$t-$n]=$(awk -v a="${cpu[$t-$n]}" -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", a + u + s }')
        done
        size[$t-$n]=$(du -sb "$repos/$t" | cut -f1)
        sync
    done
done
"$vr" -r "$repos/vrepo" --json list >"$log/vrepo-list.json"
"$vr" -r "$repos/vrepo" tree >"$log/vrepo-tree.txt" 2>&1 || true
has_vms=0
if "$vr" -r "$repos/vrepo" vms >"$log/vrepo-vms.txt" 2>&1; then has_vms=1; fi
py entries "$log/vrepo-list.json" >"$log/vrepo-entries.txt"

# --- Builds ------------------------------------------------------------------------------------

# The selector VM:latest when this vrepo has it, else the VM's newest entry from the list.
selector() {
    if "$vr" -r "$repos/vrepo" show "$1:latest" --json >/dev/null 2>&1; then
        echo "$1:latest"
    else
        py latest "$log/vrepo-list.json" "$1"
    fi
}
restic -r "$repos/restic" snapshots --json >"$log/restic-snapshots.json"

# build TOOL VM NAME: VM's newest state restored by TOOL into an empty folder, timed as NAME,
# then checked against the VM folder.
build() {
    local t=$1 vm=$2 name=$3 got snap
    rm -rf "$dest"
    mkdir -p "$dest"
    sync
    case $t in
    vrepo)
        timed "$name" "$vr" -r "$repos/vrepo" build "$(selector "$vm")" "$dest"
        got=$dest
        ;;
    restic)
        snap=$(py snapshot "$log/restic-snapshots.json" "$site/$vm") || die "no restic snapshot of $site/$vm"
        timed "$name" restic -r "$repos/restic" restore "$snap" --target "$dest"
        got=$dest$site/$vm
        ;;
    borg)
        timed "$name" env -C "$dest" borg extract "$repos/borg::$vm-n3"
        got=$dest/$vm
        ;;
    esac
    check_tree "$name" "$got" "$site/$vm"
    rm -rf "$dest"
}
declare -A bmed bruns brss
for ((r = 1; r <= runs; r++)); do
    for vm in "${build_vms[@]}"; do
        for ((k = 0; k < ${#tools[@]}; k++)); do
            t=${tools[(k + r - 1) % ${#tools[@]}]}
            say "build $r/$runs: $vm with $t"
            build "$t" "$vm" "build-$t-$vm-$r"
        done
    done
done
for vm in "${build_vms[@]}"; do
    for t in "${tools[@]}"; do
        ws="" rs=""
        for ((r = 1; r <= runs; r++)); do
            ws+=" ${wall[build-$t-$vm-$r]}"
            rs+=" ${rss[build-$t-$vm-$r]}"
        done
        bmed[$t-$vm]=$(median "$ws")
        bruns[$t-$vm]=${ws# }
        brss[$t-$vm]=$(maxof "$rs")
    done
done
others=""
for vm in "${vms[@]}"; do
    [[ " ${build_vms[*]} " == *" $vm "* ]] && continue
    for t in "${tools[@]}"; do
        say "build: $vm with $t (checked, not in the medians)"
        build "$t" "$vm" "build-$t-$vm-once"
        brss[$t-once]=$(maxof "${brss[$t-once]:-0} ${rss[build-$t-$vm-once]}")
    done
    others+=" $vm"
done

# --- Prune check -------------------------------------------------------------------------------

say "prune: copying the vrepo repository"
cp -a "$repos/vrepo" "$work/prune"
sync
say "prune --keep-last 2"
prune_ok=1
if ! try_timed prune "$vr" -r "$work/prune" prune --keep-last 2; then
    say "WRONG: prune --keep-last 2 failed: $(tail -n3 "$log/prune.err")"
    prune_ok=0
    wrong=1
fi
"$vr" -r "$work/prune" --json list >"$log/prune-list.json"
if ! py prunecheck "$log/vrepo-list.json" "$log/prune-list.json" 2 >"$log/prune-check.txt"; then
    say "WRONG: prune --keep-last 2 did not keep each VM's 2 newest entries (see $log/prune-check.txt)"
    prune_ok=0
    wrong=1
fi
size[prune]=$(du -sb "$work/prune" | cut -f1)
pruned_checked=""
for vm in "${build_vms[@]}"; do
    while read -r e_vm e_name _ _ _ e_night _; do
        [[ $e_vm == "$vm" ]] || continue
        rm -rf "$dest"
        if "$vr" -r "$work/prune" build "$e_name" "$dest" >"$log/prune-build-$e_name.log" 2>&1; then
            check_tree "prune-$vm-$e_name" "$dest" "$states/$e_night/$vm"
            pruned_checked+=" $vm:$e_name(night $e_night)"
        else
            say "WRONG: build $e_name ($vm) after the prune failed: $(tail -n3 "$log/prune-build-$e_name.log")"
            wrong=1
        fi
        rm -rf "$dest"
    done < <(py entries "$log/prune-list.json")
done
[[ -n $pruned_checked ]] || {
    say "WRONG: no kept entry of ${build_vms[*]} was built after the prune"
    wrong=1
}
"$vr" -r "$work/prune" tree >"$log/prune-tree.txt" 2>&1 || true
rm -rf "$work/prune"

# --- Report ------------------------------------------------------------------------------------

limit1=$(awk '{ s += $(NF - 2) } END { print s }' "$work/limit.txt")
limit3=$(awk '{ s += $(NF - 1) } END { print s }' "$work/limit.txt")
limit_raw=$(awk '$1 == "change" { s += $NF } END { print s }' "$work/limit.txt")
site_bytes=$(du -sb "$site" | cut -f1)
vrss=0
for n in 1 2 3; do
    for vm in "${vms[@]}"; do vrss=$(maxof "$vrss ${rss[vrepo-$n-$vm]}"); done
done
for vm in "${build_vms[@]}"; do vrss=$(maxof "$vrss ${brss[vrepo-$vm]}"); done
vrss=$(maxof "$vrss ${brss[vrepo-once]:-0} ${rss[prune]:-0}")

printf '\nsite benchmark, %s (%s), 8 VMs from 2 templates, disks %s MiB, %s MiB of files per template, churn %s%% per VM and night, site %s MiB, %s parallel saves\n' \
    "$(date -u +%F)" "$rev" "$disk_mib" "$data_mib" "$churn" "$(mib "$site_bytes")" "$jobs"
printf '  load: %s\n' "$(uptime)"
sed 's/^/  /' "$work/layout.txt"
printf '\nper VM saves, wall s (peak RSS MiB)\n'
printf '  %-8s' night/vm
for vm in "${vms[@]}"; do printf ' %15s' "$vm"; done
printf '\n'
for t in "${tools[@]}"; do
    for n in 1 2 3; do
        printf '  %-8s' "$t $n"
        for vm in "${vms[@]}"; do printf ' %15s' "${wall[$t-$n-$vm]} ($(kib2mib "${rss[$t-$n-$vm]}"))"; done
        printf '\n'
    done
done
printf '\nbuilds of the newest state, each run (s)\n'
for vm in "${build_vms[@]}"; do
    for t in "${tools[@]}"; do
        printf '  %-6s %-7s %s (median %s; peak RSS %s MiB)\n' "$vm" "$t" "${bruns[$t-$vm]}" "${bmed[$t-$vm]}" "$(kib2mib "${brss[$t-$vm]}")"
    done
done
printf '\nvrepo entries (vm, entry, number, mode, parent, night, stored delta bytes, based on)\n'
sed 's/^/  /' "$log/vrepo-entries.txt"
if [[ $has_vms == 1 ]]; then
    printf '\nvrepo vms\n'
    sed 's/^/  /' "$log/vrepo-vms.txt"
fi
printf '\nprune --keep-last 2 on a copy (%s s, peak RSS %s MiB; repository %s -> %s MiB)\n' "${wall[prune]:-?}" \
    "$(kib2mib "${rss[prune]:-0}")" "$(mib "${size[vrepo-3]}")" "$(mib "${size[prune]}")"
sed 's/^/  /' "$log/prune-check.txt"
printf '  built after the prune and compared with the reference states:%s\n' "${pruned_checked:- nothing}"

row() { # row LABEL CELL...: a markdown table row
    printf '| %s |' "$1"
    shift
    printf ' %s |' "$@"
    printf '\n'
}
cell() { if [[ $1 == vrepo ]]; then printf '**%s**' "$2"; else printf '%s' "$2"; fi; }
hdr=("" "${tools[@]}")
printf '\n'
row "${hdr[@]}"
printf '|---|'
for _ in "${tools[@]}"; do printf -- '---:|'; done
printf '\n'
for n in 1 2 3; do
    cells=()
    for t in "${tools[@]}"; do
        cells+=("$(cell "$t" "${night[$t-$n]} s")")
    done
    label="night $n: 8 VMs saved ($jobs at a time; borg 1)"
    ((n == 1)) && label="night 1: 8 first saves (templates, then clones; $jobs at a time; borg 1)"
    row "$label" "${cells[@]}"
done
cells=()
for t in "${tools[@]}"; do cells+=("${cpu[$t-1]} / ${cpu[$t-2]} / ${cpu[$t-3]} s"); done
row "CPU time of the saves (user + system), nights 1 / 2 / 3" "${cells[@]}"
for vm in "${build_vms[@]}"; do
    cells=()
    for t in "${tools[@]}"; do
        cells+=("$(cell "$t" "${bmed[$t-$vm]} s")")
    done
    kind=clone
    [[ $vm == tmpl* ]] && kind=template
    row "build $vm's newest ($kind; median of $runs)" "${cells[@]}"
done
cells=()
for t in "${tools[@]}"; do
    cells+=("$(cell "$t" "$(mib "${size[$t-3]}") MiB")")
done
row "repository after 3 nights" "${cells[@]}"
cells=()
for t in "${tools[@]}"; do
    m=0
    for n in 1 2 3; do
        for vm in "${vms[@]}"; do m=$(maxof "$m ${rss[$t-$n-$vm]}"); done
    done
    b=0
    for vm in "${build_vms[@]}"; do b=$(maxof "$b ${brss[$t-$vm]}"); done
    b=$(maxof "$b ${brss[$t-once]:-0}")
    cells+=("$(kib2mib "$m") / $(kib2mib "$b") MiB")
done
row "peak RSS, saves / builds" "${cells[@]}"
printf '\nlimit (zstd -1 of each template'"'"'s disk + of every night'"'"'s changed runs + small files): %s MiB (zstd -3: %s MiB; changed runs uncompressed: %s MiB)\n' \
    "$(mib "$limit1")" "$(mib "$limit3")" "$(mib "$limit_raw")"
printf 'repository sizes after nights 1, 2, 3 (MiB):'
for t in "${tools[@]}"; do printf ' %s %s / %s / %s;' "$t" "$(mib "${size[$t-1]}")" "$(mib "${size[$t-2]}")" "$(mib "${size[$t-3]}")"; done
printf '\n'

r_limit=$(ratio "${size[vrepo-3]}" "$limit1")
r_restic=$(ratio "${size[vrepo-3]}" "${size[restic-3]}")
printf '\ngoals:\n'
goal "vrepo repository ${r_limit}x the limit (goal <= 1.2)" "$(ge 1.2 "$r_limit")"
goal "vrepo repository ${r_restic}x restic's (goal <= 0.8)" "$(ge 0.8 "$r_restic")"
printf '  info  night 1 (first saves): restic %sx vrepo'"'"'s time\n' "$(ratio "${night[restic-1]}" "${night[vrepo-1]}")"
for n in 2 3; do
    r=$(ratio "${night[restic-$n]}" "${night[vrepo-$n]}")
    goal "night $n: restic's saves ${r}x vrepo's time (goal >= 4)" "$(ge "$r" 4)"
done
for vm in "${build_vms[@]}"; do
    r=$(ratio "${bmed[restic-$vm]}" "${bmed[vrepo-$vm]}")
    goal "build $vm: restic restore ${r}x vrepo build's time (goal >= 3)" "$(ge "$r" 3)"
done
goal "vrepo peak RSS $(kib2mib "$vrss") MiB over every save, build and the prune (goal < 256); template's night-1 save $(kib2mib "${rss[vrepo-1-tmplA]}") MiB, clone's night-2 save $(kib2mib "${rss[vrepo-2-webA2]}") MiB" "$(ge 262143 "$vrss")"
if [[ $skip_borg != 1 ]]; then
    printf '  info  borg: nights %sx, %sx, %sx vrepo'"'"'s time (one at a time); builds %sx, %sx; repository %sx vrepo'"'"'s\n' \
        "$(ratio "${night[borg-1]}" "${night[vrepo-1]}")" "$(ratio "${night[borg-2]}" "${night[vrepo-2]}")" \
        "$(ratio "${night[borg-3]}" "${night[vrepo-3]}")" "$(ratio "${bmed[borg-${build_vms[0]}]}" "${bmed[vrepo-${build_vms[0]}]}")" \
        "$(ratio "${bmed[borg-${build_vms[1]}]}" "${bmed[vrepo-${build_vms[1]}]}")" "$(ratio "${size[borg-3]}" "${size[vrepo-3]}")"
fi
# Clones stored once: their first entries are partial, on an entry of their own family.
read -r c_on c_bytes t_bytes < <(awk '$6 == 1 {
    if ($1 ~ /^tmpl/) t += $7
    else { c += $7; fam = substr($1, length($1) - 1, 1); if ($4 != "full" && $8 ~ ("^[a-zA-Z]*" fam)) on++ }
} END { print on + 0, c + 0, t + 0 }' "$log/vrepo-entries.txt")
printf '  info  clones'"'"' first saves: %d of 6 partial on an entry of their template'"'"'s family, storing %s MiB in all (the templates'"'"' full entries %s MiB)\n' \
    "$c_on" "$(mib "$c_bytes")" "$(mib "$t_bytes")"
printf '  info  every VM'"'"'s newest state built by each tool and checked byte for byte (%s timed,%s once)\n' "${build_vms[*]}" "$others"
printf '  prune check: %s\n' "$([[ $prune_ok == 1 ]] && echo "each VM kept its 2 newest entries" || echo FAILED)"

rm -rf "$dest"
((wrong == 0)) || exit 1
# shellcheck disable=SC2154 # strict is set by bench_args (bench-lib.sh)
((strict == 1 && missed == 1)) && exit 3
exit 0
