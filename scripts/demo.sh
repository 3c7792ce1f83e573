#!/usr/bin/env bash
# Quick-start demo of the main job: save a VM's states into a repository and build one back.
#
# Makes a sample VM working area with qemu-img (an ext4 file system of real files from /usr,
# as a monolithicSparse VMDK, plus a .vmx and an .nvram), then:
#   state 1  -> vrepo save                 (E1, full: the first save of this working area)
#   state 2  -> vrepo save                 (E2, incremental: only what changed since E1)
#   state 3  -> vrepo save --differential  (E3: what changed since E1, the tree's full entry)
#   vrepo build E1 into the working area, state 4 -> vrepo save (E4, incremental on E1)
# draws the tree, builds the old entry E2 into a new working area and checks it byte for byte
# against the state saved, with vmdk-parse check and qemu-img check, and lists a folder of the
# built disk's file system. Last, a second VM: `web2`, a full clone of the first (its folder
# copied and renamed, as VMware clones), is saved into the same repository: vrepo finds the
# entry it shares most with and stores only what differs; `vrepo vms` and the tree show both.
# Then the 3 a.m. restore of one file: `vrepo mount` shows every entry's files and each disk's
# guest image without building anything, and debugfs takes one file out of E2's guest (skipped
# where FUSE is not available).
#
# Usage: scripts/demo.sh            (DEMO_DIR=folder to keep the files somewhere known)
# Needs: cargo, qemu-utils, e2fsprogs (mke2fs, debugfs), fuse3; installs the packages when missing
# (as root with apt-get; else it names the command to run).
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# shellcheck source=scripts/need.sh
. "$repo_root/scripts/need.sh"
need qemu-utils e2fsprogs fuse3

echo "demo: building the tools (the first time: about 2 minutes)..." >&2
(cd "$repo_root" && cargo build --release -p vrepo -p vmdk-parse)
VREPO="$repo_root/target/release/vrepo"
VP="$repo_root/target/release/vmdk-parse"
work="${DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$work"
work=$(cd "$work" && pwd)
cd "$work"
rm -rf wa repo restored states staging disk.raw
mkdir -p wa states staging
export VREPO_REPOSITORY="$work/repo"

say "A sample VM: 256 MiB ext4 disk holding ~40 MiB of files from /usr, a .vmx, an .nvram"
# Real files (not random bytes): the first ~40 MiB of regular files under /usr/share and /usr/lib.
find /usr/share /usr/lib -xdev -type f -size -4M -readable -printf '%s %p\n' 2>/dev/null |
    awk -v lim=$((40 * 1024 * 1024)) '{ t += $1; if (t > lim) exit; sub(/^[0-9]+ /, ""); print }' >staging.list || true
i=0
while IFS= read -r f; do
    i=$((i + 1))
    d="staging/d$((i % 20))"
    mkdir -p "$d"
    cp "$f" "$d/$i-$(basename "$f" | tr -c 'A-Za-z0-9._\n-' _)" 2>/dev/null || true
done <staging.list
mke2fs -q -t ext4 -d staging disk.raw 256M
qemu-img convert -O vmdk disk.raw wa/demo.vmdk
cat >wa/demo.vmx <<'VMX'
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "demo"
guestOS = "debian12-64"
memSize = "1024"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "demo.vmdk"
nvram = "demo.nvram"
VMX
head -c 8684 /dev/urandom >wa/demo.nvram
ls -ls wa

# evolve N: the guest writes new files and deletes others (debugfs -w on the raw image), and
# the VMDK changes (converted again, as a new file would be written by VMware).
evolve() {
    local n=$1 k
    {
        for k in 1 2 3; do
            echo "write $(find /usr/bin -maxdepth 1 -type f | sort | sed -n "$((n * 7 + k))p") new-$n-$k"
        done
        echo "rm d$n/$(debugfs -R "ls -p d$n" disk.raw 2>/dev/null | awk -F/ 'NF > 5 && $6 ~ /^[0-9]/ { print $6; exit }')"
    } >"cmds.$n"
    debugfs -w -f "cmds.$n" disk.raw >/dev/null 2>&1
    qemu-img convert -O vmdk disk.raw wa/demo.vmdk.new && mv wa/demo.vmdk.new wa/demo.vmdk
}
keep() { mkdir -p "states/$1" && cp -a wa/. "states/$1/"; }

say "vrepo init, then three states saved in each mode"
"$VREPO" init
keep 1
"$VREPO" save wa -m "state 1: installed" --tag installed
evolve 2 && keep 2
"$VREPO" save wa -m "state 2: new files, one deleted"
evolve 3 && keep 3
"$VREPO" save wa --differential -m "state 3: differential on E1"

say "vrepo build E1 into the working area, change it, save: a second branch of the tree"
"$VREPO" build installed wa --force
cmp wa/demo.vmdk states/1/demo.vmdk && echo "  the working area is state 1 again"
qemu-img convert -O raw wa/demo.vmdk disk.raw
evolve 4 && keep 4
"$VREPO" save wa -m "state 4: after going back to E1"

say "vrepo tree"
"$VREPO" tree

say "vrepo diff E1 E2 (files changed, bytes changed, from stored digests only)"
"$VREPO" diff E1 E2

say "vrepo build E2 restored (an old entry, into a new working area), then check it"
"$VREPO" build E2 restored
for f in states/2/*; do
    cmp "$f" "restored/$(basename "$f")"
done
echo "  every file identical to state 2"
"$VP" check restored/demo.vmdk >/dev/null && echo "  vmdk-parse check: clean"
qemu-img check -q restored/demo.vmdk && echo "  qemu-img check: clean"
qemu-img compare -q states/2/demo.vmdk restored/demo.vmdk && echo "  qemu-img compare: same guest contents"
"$VREPO" cat --guest E2 demo.vmdk >restored.raw
echo "  files in /d2 of the built disk (vrepo cat --guest | debugfs):"
debugfs -R "ls d2" restored.raw 2>/dev/null | head -n 3 | sed 's/^/    /'

say "a second VM, web2, cloned from the first: its first save stands on the entry it shares most with"
cp -a --sparse=always wa web2
"$VREPO" save web2 -m "clone of wa"
"$VREPO" build web2:latest web2-restored >/dev/null
for f in web2/*; do
    cmp "$f" "web2-restored/$(basename "$f")"
done
echo "  web2:latest builds to the clone's files, byte for byte"
"$VREPO" vms

say "one file from inside E2's guest, with nothing built: vrepo mount, then debugfs"
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
    mkdir -p mnt
    "$VREPO" mount mnt 2>mount.log &
    mount_pid=$!
    for _ in $(seq 100); do
        [ -d mnt/entries ] && break
        sleep 0.1
    done
    echo "  mnt/entries: $(cd mnt/entries && echo *)"
    echo "  mnt/guest/E2: $(ls mnt/guest/E2)   mnt/vms/wa/latest -> $(readlink mnt/vms/wa/latest)"
    name=$(debugfs -R "ls -p d2" mnt/guest/E2/demo.raw 2>/dev/null | awk -F/ '$3 ~ /^100/ {print $6; exit}')
    debugfs -R "dump d2/$name one-file" mnt/guest/E2/demo.raw 2>/dev/null
    debugfs -R "dump d2/$name one-file.built" restored.raw 2>/dev/null
    cmp one-file one-file.built
    echo "  d2/$name ($(stat -c %s one-file) bytes) taken out of E2 through the mount: the same as from the built disk"
    kill "$mount_pid"
    wait "$mount_pid" 2>/dev/null || true
else
    echo "  skipped: FUSE is not available here (/dev/fuse, and fusermount3 from fuse3)"
fi

say "Stored: $(du -sh repo | cut -f1) for two VMs, five states of a $(du -sh --apparent-size states/1/demo.vmdk | cut -f1) disk"
echo "Demo files are in $work"
