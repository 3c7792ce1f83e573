#!/usr/bin/env bash
# Example nightly site backup with vrepo (docs/vrepo.md).
#
# Usage: site-backup.sh [options] VMS_DIR
#
# Every VM folder under VMS_DIR (a folder holding exactly one .vmx) is saved into the
# repository: with `vrepo save --at-snapshot` when the VM is running (it has a lock folder,
# *.lck: the VM is saved as of its current VMware snapshot), with a plain `vrepo save`
# otherwise. A VM that fails is logged and the others are still saved. Then `vrepo prune`
# applies the retention policy. Every step is logged with a UTC timestamp.
#
# Options (the environment variable that sets the same thing in brackets):
#   -r, --repo REPO       the repository                          [VREPO_REPOSITORY]
#   -l, --log FILE        log file, lines appended                [SITE_BACKUP_LOG]
#                         (default: REPO/site-backup.log)
#   --keep-last N         prune: keep the newest N entries        [KEEP_LAST, default 0]
#   --keep-daily D        prune: newest entry of the last D days  [KEEP_DAILY, default 7]
#   --keep-weekly W       ... of the last W ISO weeks             [KEEP_WEEKLY, default 4]
#   --keep-monthly M      ... of the last M months                [KEEP_MONTHLY, default 6]
#   --no-prune            save only                               [NO_PRUNE=1]
#   --max-chain N         passed to save (bounded restore chains) [MAX_CHAIN]
#   --wait SECONDS        wait this long for the repository lock  [LOCK_WAIT, default 3600]
#   --vrepo PATH          the vrepo binary                        [VREPO, default vrepo]
#   -h, --help            this text
#
# Exit status: 0 when every VM was saved and the prune succeeded; 1 when any VM (or the
# prune) failed; 2 on a usage error.
#
# Example crontab line:
#   30 1 * * *  /opt/vml/scripts/site-backup.sh -r /backup/repo /vmfs/volumes/datastore1

set -uo pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

repo=${VREPO_REPOSITORY:-}
log=${SITE_BACKUP_LOG:-}
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
        -l | --log) need "$@"; log=$2; shift 2 ;;
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
for n in "$keep_last" "$keep_daily" "$keep_weekly" "$keep_monthly" "$lock_wait"; do
    case "$n" in
        '' | *[!0-9]*) echo "site-backup: $n is not a number" >&2; exit 2 ;;
    esac
done
log=${log:-$repo/site-backup.log}

# One line, timestamped, to the log and to stderr.
say() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
    printf '%s\n' "$line" >>"$log"
    printf '%s\n' "$line" >&2
}

# Run vrepo; its messages go to the log, one timestamped line each. Returns its status.
run_vrepo() {
    local out status
    out=$("$vrepo" -r "$repo" --quiet --wait "$lock_wait" "$@" 2>&1)
    status=$?
    while IFS= read -r l; do
        [ -n "$l" ] && say "  $l"
    done <<<"$out"
    return "$status"
}

if ! touch "$log" 2>/dev/null; then
    echo "site-backup: cannot write the log $log" >&2
    exit 2
fi

say "site backup of $vms into $repo: start"
saved=0
failed=0
failed_names=()

# VM folders: folders with a .vmx file, outside lock folders, in a stable order.
mapfile -t dirs < <(find "$vms" -name '*.lck' -prune -o -type f -name '*.vmx' -printf '%h\n' | sort -u)

for dir in "${dirs[@]}"; do
    name=${dir#"$vms"/}
    vmx_count=$(find "$dir" -maxdepth 1 -type f -name '*.vmx' | wc -l)
    if [ "$vmx_count" -ne 1 ]; then
        say "FAILED $name: $vmx_count .vmx files in one folder; not a VM folder"
        failed=$((failed + 1))
        failed_names+=("$name")
        continue
    fi
    args=(save "$dir" -m "site backup $(date -u +%Y-%m-%d)")
    how=plain
    if [ -n "$(find "$dir" -maxdepth 1 -name '*.lck' -print -quit)" ]; then
        args+=(--at-snapshot)
        how="at its snapshot (running)"
    fi
    if [ -n "$max_chain" ]; then
        args+=(--max-chain "$max_chain")
    fi
    say "saving $name, $how"
    if run_vrepo "${args[@]}"; then
        saved=$((saved + 1))
        say "saved $name"
    else
        status=$?
        failed=$((failed + 1))
        failed_names+=("$name")
        say "FAILED $name (vrepo exit $status)"
    fi
done

prune_failed=0
if [ -n "$no_prune" ]; then
    say "prune skipped (--no-prune)"
elif [ $((keep_last + keep_daily + keep_weekly + keep_monthly)) -eq 0 ]; then
    say "prune skipped: no retention policy"
else
    say "prune: keep last $keep_last, daily $keep_daily, weekly $keep_weekly, monthly $keep_monthly"
    if ! run_vrepo prune --keep-last "$keep_last" --keep-daily "$keep_daily" \
        --keep-weekly "$keep_weekly" --keep-monthly "$keep_monthly"; then
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
