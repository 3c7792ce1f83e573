#!/usr/bin/env bash
# What the demo, the tests and CI need from the system, in one place, and its installation.
#
# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run:
#     . scripts/need.sh && need PACKAGE...       # or need_all: every package below
# For each package whose commands are missing: as root with apt-get, `apt-get update` once and
# install them all quietly, saying so in one line; otherwise stop (exit 2) with one line naming
# the command to run. cargo is checked too (it comes from rustup, not apt-get).
# NEED_NO_INSTALL=1: never install, only say what to run (the tests use it).
#
# Run directly, it installs nothing:
#     scripts/need.sh --check [PACKAGE...]       # prints each missing package, exit 1 if any

# Debian package: the commands it provides that we use.
#   qemu-utils     disk images (the demo, the end-to-end tests' oracle)
#   e2fsprogs      the demo's ext4 file system of real files
#   libvmdk-utils  libvmdk's vmdkinfo, the end-to-end tests' second oracle
#   make, shellcheck: for the site scripts' tests
#   util-linux     flock and prlimit (locking, file-size limits)
#   bsdutils       script (a terminal, for the tests of terminal refusal)
#   man-db         man (the install test renders each man page with man -l)
#   fuse3          fusermount3 (vrepo mount and its tests)
#   curl           signed S3 requests (--aws-sigv4) of the tests against Garage
NEED_PACKAGES=(
    "qemu-utils: qemu-img qemu-io"
    "e2fsprogs: mke2fs debugfs"
    "libvmdk-utils: vmdkinfo"
    "shellcheck: shellcheck"
    "make: make"
    "util-linux: flock prlimit"
    "bsdutils: script"
    "man-db: man"
    "fuse3: fusermount3"
    "curl: curl"
)

# need_missing [PACKAGE...]: the packages (of those named, or of all) with a command missing,
# one a line.
need_missing() {
    local entry pkg cmd
    for entry in "${NEED_PACKAGES[@]}"; do
        pkg=${entry%%:*}
        if [ $# -gt 0 ] && [[ " $* " != *" $pkg "* ]]; then
            continue
        fi
        for cmd in ${entry#*:}; do
            if ! command -v "$cmd" >/dev/null; then
                echo "$pkg"
                break
            fi
        done
    done
}

# need_known [PACKAGE...]: stop (exit 2) on a name that is not in NEED_PACKAGES.
need_known() {
    local pkg entry known
    for pkg in "$@"; do
        known=no
        for entry in "${NEED_PACKAGES[@]}"; do
            [ "${entry%%:*}" = "$pkg" ] && known=yes
        done
        if [ $known = no ]; then
            echo "${0##*/}: unknown package $pkg (need.sh knows: ${NEED_PACKAGES[*]%%:*})" >&2
            exit 2
        fi
    done
}

# need [PACKAGE...]: make sure cargo and the packages' commands are there (see the top).
need() {
    local who=${0##*/} missing out
    need_known "$@"
    if ! command -v cargo >/dev/null; then
        echo "$who: cargo is missing: install Rust with https://rustup.rs, then run this again" >&2
        exit 2
    fi
    mapfile -t missing < <(need_missing "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "${NEED_NO_INSTALL:-}" != 1 ] && [ "$EUID" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "$who: installing ${missing[*]} (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        # apt-get's chatter (debconf's notes too) is shown only when it fails.
        if ! out=$(apt-get update -qq 2>&1 && apt-get install -y -qq "${missing[@]}" 2>&1); then
            printf '%s\n' "$out" >&2
            echo "$who: apt-get install ${missing[*]} failed" >&2
            exit 2
        fi
        mapfile -t missing < <(need_missing "$@")
        [ ${#missing[@]} -eq 0 ] && return 0
        echo "$who: still missing after apt-get install: ${missing[*]}" >&2
        exit 2
    fi
    if command -v apt-get >/dev/null; then
        echo "$who: missing packages; install them with: sudo apt-get install ${missing[*]}" >&2
    else
        echo "$who: missing packages (Debian names): ${missing[*]}; install them with your system's package manager" >&2
    fi
    exit 2
}

# need_all: need every package of NEED_PACKAGES (the tests and CI).
need_all() {
    need "${NEED_PACKAGES[@]%%:*}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    if [ "${1:-}" != --check ]; then
        echo "usage: scripts/need.sh --check [PACKAGE...]   (or source it and call need)" >&2
        exit 2
    fi
    shift
    need_known "$@"
    mapfile -t missing < <(need_missing "$@")
    [ ${#missing[@]} -eq 0 ] || {
        printf '%s\n' "${missing[@]}"
        exit 1
    }
fi
