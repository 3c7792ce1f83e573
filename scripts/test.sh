#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test of every crate
# (unit, property, CLI, and end-to-end tests against qemu-img and libvmdk), and a build of the
# fuzz targets when cargo-fuzz is available.
# Installs what the tests need when it is missing (scripts/need.sh: as root with apt-get; else it
# names the command to run), and Garage, the S3 store of the S3 repository tests
# (scripts/need-garage.sh: built once with cargo into ~/.cache/vml, 10-20 minutes), whose path
# the tests read from VML_GARAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/need.sh
. scripts/need.sh
need_all
# shellcheck source=scripts/need-garage.sh
. scripts/need-garage.sh
need_garage
VML_GARAGE=$(garage_path)
export VML_GARAGE

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (builds every crate: the first time, a few minutes)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
echo "== fuzz targets build (run them with: cd vmdk-parse/fuzz && cargo fuzz run open_disk)"
cargo build --manifest-path vmdk-parse/fuzz/Cargo.toml
cargo build --manifest-path vmx-parse/fuzz/Cargo.toml
cargo build --manifest-path vdiff/fuzz/Cargo.toml
cargo build --manifest-path vrepo/fuzz/Cargo.toml
