#!/usr/bin/env bash
# Nightly site backup with vrepo (docs/vrepo.md): every VM of a folder of working areas.
#
# Usage: site-backup.sh [options] VMS_DIR
#
# Every VM folder under VMS_DIR (a folder holding a .vmx, at any depth, outside lock folders;
# one holding more than one .vmx fails) is saved into the repository as a VM of its own:
# `vrepo save FOLDER --vm NAME`, where NAME is the folder's path under VMS_DIR with every `/`
# and control character made `_` (prod/web is VM prod_web; VMS_DIR itself, when it holds the
# .vmx, is named after its folder). Two folders that would get the same name both fail, and so
# does a name vrepo refuses (an entry's name such as E7). A running VM (it has a lock folder,
# *.lck) is saved with --at-snapshot, as of its current VMware snapshot; a VM shut down with a
# plain save. Up to --jobs VMs are saved at once. A VM that fails is logged and the others are
# still saved. After all saves, one `vrepo prune` applies the retention policy to each VM saved
# by this run: every VM keeps its own newest entries, as the policy counts them. A VM that
# failed is not pruned (it keeps the entries it had), nor is a VM of the repository that is
# not under VMS_DIR.
#
# Logs: every line starts with a UTC timestamp and is appended. The main log gets every step
# (and stderr too); each VM's own lines (what was done, vrepo's messages, what prune kept of
# it) also go to its own log, NAME.log in the --log-dir folder.
#
# Options (the environment variable that sets the same thing in brackets):
#   -r, --repo REPO       the repository                          [VREPO_REPOSITORY]
#   -j, --jobs N          save up to N VMs at once                [SITE_JOBS, default 2]
#   -l, --log FILE        main log file                           [SITE_BACKUP_LOG]
#                         (default: REPO/site-backup.log)
#   --log-dir DIR         the folder of the logs of each VM       [SITE_LOG_DIR]
#                         (default: REPO/site-logs)
#   --keep-last N         prune: keep each VM's newest N entries  [KEEP_LAST, default 0]
#   --keep-daily D        ... its newest entry of each of its     [KEEP_DAILY, default 7]
#                         newest D days that have entries
#   --keep-weekly W       ... of its newest W ISO weeks           [KEEP_WEEKLY, default 4]
#   --keep-monthly M      ... of its newest M months              [KEEP_MONTHLY, default 6]
#   --no-prune            save only                               [NO_PRUNE=1]
#   --max-chain N         passed to save (bounded restore chains) [MAX_CHAIN]
#   --wait SECONDS        wait this long for the repository lock  [LOCK_WAIT, default 3600]
#   --vrepo PATH          the vrepo binary                        [VREPO, default vrepo]
#   -h, --help            this text
#
# Exit status: 0 when every VM was saved and the prune succeeded; 1 when any VM (or the
# prune) failed, the last line naming every VM that failed, or when VMS_DIR holds no VM
# folder; 2 on a usage error.
#
# Example crontab line:
#   30 1 * * *  /opt/vml/scripts/site-backup.sh -j 4 -r /backup/repo /vmfs/volumes/datastore1

set -uo pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

repo=${VREPO_REPOSITORY:-}
log=${SITE_BACKUP_LOG:-}
log_dir=${SITE_LOG_DIR:-}
jobs=${SITE_JOBS:-2}
keep_last=${KEEP_LAST:-0}
keep_daily=${KEEP_DAILY:-7}
keep_weekly=${KEEP_WEEKLY:-4}
keep_monthly=${KEEP_MONTHLY:-6}
no_prune=${NO_PRUNE:-}
max_chain=${MAX_CHAIN:-}
lock_wait=${LOCK_WAIT:-3600}
vrepo=${VREPO:-vrepo}
vms=

need() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then
        echo "site-backup: $1 needs a value" >&2
        exit 2
    fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        -r | --repo) need "$@"; repo=$2; shift 2 ;;
        -j | --jobs) need "$@"; jobs=$2; shift 2 ;;
        -l | --log) need "$@"; log=$2; shift 2 ;;
        --log-dir) need "$@"; log_dir=$2; shift 2 ;;
        --keep-last) need "$@"; keep_last=$2; shift 2 ;;
        --keep-daily) need "$@"; keep_daily=$2; shift 2 ;;
        --keep-weekly) need "$@"; keep_weekly=$2; shift 2 ;;
        --keep-monthly) need "$@"; keep_monthly=$2; shift 2 ;;
        --no-prune) no_prune=1; shift ;;
        --max-chain) need "$@"; max_chain=$2; shift 2 ;;
        --wait) need "$@"; lock_wait=$2; shift 2 ;;
        --vrepo) need "$@"; vrepo=$2; shift 2 ;;
        -h | --help) usage ;;
        -*) echo "site-backup: unknown option $1" >&2; exit 2 ;;
        *)
            [ -z "$vms" ] || { echo "site-backup: one VMS_DIR only" >&2; exit 2; }
            vms=$1
            shift
            ;;
    esac
done

[ -n "$vms" ] || usage
[ -d "$vms" ] || { echo "site-backup: $vms is not a folder" >&2; exit 2; }
[ -n "$repo" ] || { echo "site-backup: no repository: -r REPO or VREPO_REPOSITORY" >&2; exit 2; }
for n in "$keep_last" "$keep_daily" "$keep_weekly" "$keep_monthly" "$lock_wait" "$jobs"; do
    case "$n" in
        '' | *[!0-9]*) echo "site-backup: $n is not a number" >&2; exit 2 ;;
    esac
done
if [ "$jobs" -lt 1 ]; then
    echo "site-backup: --jobs must be at least 1" >&2
    exit 2
fi
log=${log:-$repo/site-backup.log}
# The default VM log folder is made inside the repository only, never with the repository.
mkdir_log_dir=(mkdir -p)
if [ -z "$log_dir" ]; then
    log_dir=$repo/site-logs
    mkdir_log_dir=(mkdir)
fi
# VMS_DIR without trailing slashes, so that the folders find prints start with "$vms/".
while [ "$vms" != / ] && [ "${vms%/}" != "$vms" ]; do
    vms=${vms%/}
done

stamp() {
    date -u +%Y-%m-%dT%H:%M:%SZ
}

# One line, timestamped, to the main log and to stderr.
say() {
    local line
    line="$(stamp) $*"
    printf '%s\n' "$line" >>"$log"
    printf '%s\n' "$line" >&2
}

# The same, and to the log of the VM being saved ($vm_log, set by save_vm).
vm_say() {
    local line
    line="$(stamp) $*"
    printf '%s\n' "$line" >>"$vm_log"
    printf '%s\n' "$line" >>"$log"
    printf '%s\n' "$line" >&2
}

# Run vrepo; each line it prints becomes a timestamped line as it comes, prefixed by PREFIX:
# with TO=vm through vm_say, with TO=prune through prune_say, else through say. Returns vrepo's
# status.
run_vrepo() {
    local to=$1 prefix=$2
    shift 2
    "$vrepo" -r "$repo" --quiet --wait "$lock_wait" "$@" 2>&1 |
        while IFS= read -r l || [ -n "$l" ]; do
            [ -n "$l" ] || continue
            case "$to" in
                vm) vm_say "  $prefix$l" ;;
                prune) prune_say "  $prefix$l" ;;
                *) say "  $prefix$l" ;;
            esac
        done
    return "${PIPESTATUS[0]}"
}

if ! touch "$log" 2>/dev/null; then
    echo "site-backup: cannot write the log $log" >&2
    exit 2
fi
if { [ ! -d "$log_dir" ] && ! "${mkdir_log_dir[@]}" "$log_dir" 2>/dev/null; } || [ ! -w "$log_dir" ]; then
    echo "site-backup: cannot write the VM logs in $log_dir" >&2
    exit 2
fi
# Each save job leaves its exit status here, in a file named after its index.
state=$(mktemp -d "${TMPDIR:-/tmp}/site-backup.XXXXXX") || {
    echo "site-backup: cannot make a temporary folder" >&2
    exit 2
}
trap 'rm -rf "$state"' EXIT

# VM folders: folders with a .vmx file, outside lock folders, in a stable order (NUL-separated:
# any character may be in a folder's name).
mapfile -d '' -t dirs < <(find "$vms" -name '*.lck' -prune -o -type f -name '*.vmx' -printf '%h\0' | sort -zu)

# The VM name of each folder.
names=()
for i in "${!dirs[@]}"; do
    dir=${dirs[$i]}
    if [ "$dir" = "$vms" ]; then
        name=$(basename "$(cd "$dir" && pwd -P)")
    elif [ "$vms" = / ]; then
        name=${dir#/}
    else
        name=${dir#"$vms"/}
    fi
    name=${name//\//_}
    name=${name//[[:cntrl:]]/_}
    names[i]=$name
done
# Names that more than one folder would get.
mapfile -d '' -t taken_twice < <(printf '%s\0' "${names[@]}" | sort -z | uniq -zd)

taken_twice() {
    local n
    for n in "${taken_twice[@]}"; do
        [ "$n" = "$1" ] && return 0
    done
    return 1
}

say "site backup of $vms into $repo: start (${#dirs[@]} VM folders, up to $jobs at once; VM logs in $log_dir)"

# Save the VM of folder number $1. Its lines go to the main log, stderr and its own log; its
# status, last, to $state/$1 (a job that leaves none has failed).
save_vm() {
    local i=$1 dir=${dirs[$1]} name=${names[$1]} vmx_count how status
    local vm_log=$log_dir/$name.log
    local args=(save "$dir" "--vm=$name" -m "site backup $(date -u +%Y-%m-%d)")
    vmx_count=$(find "$dir" -maxdepth 1 -type f -name '*.vmx' | wc -l)
    if [ "$vmx_count" -ne 1 ]; then
        vm_say "FAILED $name: $vmx_count .vmx files in one folder; not a VM folder"
        return 1
    fi
    how=plain
    if [ -n "$(find "$dir" -maxdepth 1 -name '*.lck' -print -quit)" ]; then
        args+=(--at-snapshot)
        how="at its snapshot (running)"
    fi
    if [ -n "$max_chain" ]; then
        args+=(--max-chain "$max_chain")
    fi
    vm_say "saving $name, $how, from $dir"
    run_vrepo vm "$name: " "${args[@]}"
    status=$?
    if [ "$status" -eq 0 ]; then
        vm_say "saved $name"
    else
        vm_say "FAILED $name (vrepo exit $status)"
    fi
    return "$status"
}

for i in "${!dirs[@]}"; do
    name=${names[$i]}
    if taken_twice "$name"; then
        vm_log=$log_dir/$name.log
        vm_say "FAILED $name: more than one folder gets this VM name (${dirs[$i]} is one); rename them"
        echo 1 >"$state/$i"
        continue
    fi
    # A free place in the pool first.
    while [ "$(jobs -pr | wc -l)" -ge "$jobs" ]; do
        wait -n
    done
    (
        save_vm "$i"
        echo "$?" >"$state/$i"
    ) &
done
wait

if [ "${#dirs[@]}" -eq 0 ]; then
    # An unmounted datastore looks like an empty folder: that is no success.
    say "site backup done: no VM folder (one .vmx) under $vms"
    exit 1
fi

saved=0
failed=0
failed_names=()
saved_names=()
for i in "${!dirs[@]}"; do
    name=${names[$i]}
    status=$(cat "$state/$i" 2>/dev/null)
    if [ "$status" = 0 ]; then
        saved=$((saved + 1))
        saved_names+=("$name")
    else
        if [ -z "$status" ]; then
            say "FAILED $name: its save job ended without a status"
        fi
        failed=$((failed + 1))
        failed_names+=("$name")
    fi
done

# A line of prune's report: to the main log, and a line about a VM saved tonight ("keep N
# entries of vm NAME: ...") to that VM's log too.
prune_say() {
    local name what=${*#  }
    say "$*"
    for name in "${saved_names[@]}"; do
        case "$what" in
            "keep "*" entries of vm $name: "*)
                printf '%s\n' "$(stamp) prune: $what" >>"$log_dir/$name.log"
                ;;
        esac
    done
}

prune_failed=0
if [ -n "$no_prune" ]; then
    say "prune skipped (--no-prune)"
elif [ $((keep_last + keep_daily + keep_weekly + keep_monthly)) -eq 0 ]; then
    say "prune skipped: no retention policy"
elif [ "$saved" -eq 0 ]; then
    say "prune skipped: no VM was saved"
else
    say "prune of each VM saved: keep last $keep_last, daily $keep_daily, weekly $keep_weekly, monthly $keep_monthly"
    args=(prune --keep-last "$keep_last" --keep-daily "$keep_daily"
        --keep-weekly "$keep_weekly" --keep-monthly "$keep_monthly")
    for name in "${saved_names[@]}"; do
        args+=("--vm=$name")
    done
    if ! run_vrepo prune "" "${args[@]}"; then
        prune_failed=1
        say "FAILED prune"
    fi
fi

if [ "$failed" -gt 0 ] || [ "$prune_failed" -ne 0 ]; then
    say "site backup done: $saved saved, $failed failed${failed_names[*]:+ (${failed_names[*]})}$([ "$prune_failed" -ne 0 ] && echo ', prune failed')"
    exit 1
fi
say "site backup done: $saved saved, 0 failed"
exit 0
