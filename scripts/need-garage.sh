#!/usr/bin/env bash
# Garage, the S3-compatible object store that the tests of vrepo's S3 repositories run against
# (issue 17): one release, built once with cargo into a cache that later runs and CI find.
#
#     ${VML_CACHE:-$HOME/.cache/vml}/garage-2.5.0/bin/garage
#
# Sourced by scripts/test.sh and .ci/run:
#     . scripts/need-garage.sh && need_garage      # builds it when missing, then says nothing
# When it is missing (or its `garage --version` is not 2.5.0) need_garage says so in one line
# and runs `cargo install garage --locked --version 2.5.0 --root DIR` (10-20 minutes; cargo's
# output goes to DIR.log, its tail shown only when the build fails, then one line naming the log;
# exit 2). Two runs at once build it once (flock on DIR.lock).
# VML_GARAGE=PATH: use that binary instead (the tests read the same variable); it is checked,
# never built.
# NEED_NO_INSTALL=1: never build, only say what to run (exit 2).
#
# Run directly:
#     scripts/need-garage.sh              # need_garage
#     scripts/need-garage.sh --path       # prints the binary's path (installed or not), only that
#     scripts/need-garage.sh --check      # builds nothing; exit 1 when it is missing

GARAGE_VERSION=2.5.0

# garage_path: where the binary is (or will be): $VML_GARAGE, else the cache's.
garage_path() {
    if [ -n "${VML_GARAGE:-}" ]; then
        echo "$VML_GARAGE"
    else
        echo "${VML_CACHE:-$HOME/.cache/vml}/garage-$GARAGE_VERSION/bin/garage"
    fi
}

# garage_ok [PATH]: PATH (else garage_path) runs and reports version $GARAGE_VERSION.
# (A crates.io build says `garage cargo:2.5.0 [features: ...]`, a git build `garage v2.5.0 ...`.)
garage_ok() {
    local bin=${1:-$(garage_path)} out re
    re="^garage (cargo:|v)?${GARAGE_VERSION//./\\.}( |\$)"
    [ -x "$bin" ] || return 1
    out=$("$bin" --version 2>/dev/null) || return 1
    [[ $out =~ $re ]]
}

# need_garage: make sure Garage $GARAGE_VERSION is there (see the top).
need_garage() {
    local who=${0##*/} bin dir log lock=
    bin=$(garage_path)
    garage_ok "$bin" && return 0
    if [ -n "${VML_GARAGE:-}" ]; then
        echo "$who: VML_GARAGE=$VML_GARAGE is not Garage $GARAGE_VERSION; unset it to use the one scripts/need-garage.sh builds" >&2
        exit 2
    fi
    if [ "${NEED_NO_INSTALL:-}" = 1 ]; then
        echo "$who: Garage $GARAGE_VERSION is missing ($bin); build it with: scripts/need-garage.sh (10-20 minutes)" >&2
        exit 2
    fi
    if ! command -v cargo >/dev/null; then
        echo "$who: cargo is missing: install Rust with https://rustup.rs, then run this again" >&2
        exit 2
    fi
    dir=${bin%/bin/garage}
    log=$dir.log
    mkdir -p "${dir%/*}"
    # One build at a time: a second run waits for the first, then finds the binary.
    if command -v flock >/dev/null; then
        exec {lock}>"$dir.lock"
        flock "$lock"
        if garage_ok "$bin"; then
            exec {lock}>&-
            return 0
        fi
    fi
    echo "$who: building Garage $GARAGE_VERSION (S3 store for the tests) into $dir with cargo install: 10-20 minutes, once" >&2
    # --force: a broken or other binary in DIR is replaced, not kept as "already installed".
    # The build gets a target folder of its own (cargo install's temporary one), not the
    # caller's CARGO_TARGET_DIR.
    if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
        cargo install garage --locked --force --version "$GARAGE_VERSION" --root "$dir" >"$log" 2>&1 ||
        ! garage_ok "$bin"; then
        tail -n 15 "$log" >&2
        echo "$who: cargo install garage --version $GARAGE_VERSION failed (its whole output: $log)" >&2
        exit 2
    fi
    if [ -n "$lock" ]; then
        exec {lock}>&-
    fi
    return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
    --path) garage_path ;;
    --check) garage_ok || exit 1 ;;
    "") need_garage ;;
    *)
        echo "usage: scripts/need-garage.sh [--path | --check]   (or source it and call need_garage)" >&2
        exit 2
        ;;
    esac
fi
