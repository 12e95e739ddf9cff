#!/usr/bin/env bash
# Builds the Debian packages of spa-server, red-relay and spa-client with
# cargo-deb into target/debian/: the release binaries, then each binary's
# man page and bash/zsh/fish completions rendered by its own `man` and
# `completions` commands into target/deb-assets/ (the packages' assets),
# then `cargo deb --no-build` per package.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev
# (dpkg-shlibdeps, for the packages' library dependencies).
# Knobs: CARGO_BUILD_JOBS (cargo's own).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(spa-server red-relay spa-client)
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
# The packages name them as ../target/deb-assets/ from their crates.
assets="$PWD/target/deb-assets"

cargo build --release --locked $(printf -- '-p %s ' "${packages[@]}")

rm -rf "$assets"
mkdir -p "$assets"
for p in "${packages[@]}"; do
    bin="$target/release/$p"
    # The daemons' pages name one page per subcommand: all of them. (The
    # client prints its one page.)
    mkdir -p "$assets/man-$p"
    if "$bin" man --help | grep -q -- --out-dir; then
        "$bin" man --out-dir "$assets/man-$p"
    else
        "$bin" man > "$assets/man-$p/$p.1"
    fi
    for page in "$assets/man-$p"/*.1; do
        [ -s "$page" ] || { echo "build-debs: $page is empty" >&2; exit 1; }
        gzip -9n "$page"
    done
    "$bin" completions bash > "$assets/$p.bash"
    "$bin" completions zsh > "$assets/_$p"
    "$bin" completions fish > "$assets/$p.fish"
    for f in "$assets/man-$p/$p.1.gz" "$assets/$p.bash" "$assets/_$p" "$assets/$p.fish"; do
        # A package must not ship an empty man page or completion.
        [ -s "$f" ] || { echo "build-debs: $f is empty" >&2; exit 1; }
    done
    [ "$(zcat "$assets/man-$p/$p.1.gz" | grep -c '^\.SH')" -ge 3 ] || {
        echo "build-debs: $p's man page has no sections" >&2
        exit 1
    }
done

for p in "${packages[@]}"; do
    # Stripped: the release profile keeps line tables for backtraces (61 MB
    # instead of about 8 for spa-server).
    cargo deb --no-build --locked --strip --no-separate-debug-symbols -p "$p" --output "$target/debian/"
done
ls -l "$target/debian/"*.deb
