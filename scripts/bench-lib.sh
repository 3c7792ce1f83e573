# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run): messages, the --strict/--help
# arguments, and small statistics over space-separated lists of numbers.

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 2
}

# need COMMAND PACKAGE: install PACKAGE from Debian when COMMAND is missing (as root).
apt_updated=0
need() { # need COMMAND PACKAGE: install PACKAGE when COMMAND is missing
    if [[ $1 == /* && -x $1 ]] || { [[ $1 != /* ]] && command -v "$1" >/dev/null; }; then
        return
    fi
    command -v apt-get >/dev/null || die "$1 is missing and there is no apt-get to install $2"
    [[ $(id -u) == 0 ]] || die "$1 is missing; install $2 (as root: apt-get install -y $2)"
    if ((apt_updated == 0)); then
        say "apt-get update"
        apt-get update -qq >&2
        apt_updated=1
    fi
    say "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
}

# bench_args "$@": sets `strict` (0 or 1); --help prints the calling script's header comment.
# shellcheck disable=SC2034 # strict is read by the sourcing script
bench_args() {
    strict=0
    local arg
    for arg in "$@"; do
        case $arg in
        --strict) strict=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[1]}"
            exit 0
            ;;
        *) die "unknown argument '$arg' (try --help)" ;;
        esac
    done
}

# median LIST (the mean of the two middle values for an even count), best LIST, maxof LIST.
median() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
best() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | head -n1; }
maxof() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | tail -n1; }
# ratio A B: A / B with two decimals ("inf" when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }'; }
