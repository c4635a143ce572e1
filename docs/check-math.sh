#!/usr/bin/env bash
# Checks in a real browser that the math in the API docs renders, and screenshots it.
#
#     apt-get install -y chromium   # Debian's, at /usr/bin/chromium; or set CHROMIUM=/path
#     docs/check-math.sh            # from anywhere in the repository
#
# Needs Node.js 20 or later, npm, and the npm registry (for KaTeX at the version
# katex-header.html pins, and playwright-core to drive Chromium), but no other network: it
# builds the docs (under target/check-math) with a copy of katex-header.html that loads
# KaTeX from a local server instead of the CDN, then docs/check-math.mjs opens every page
# with math in Chromium and fails where a formula is left raw, KaTeX reports an error or the
# header's integrity hashes do not match KaTeX's files. Screenshots of a few pages go to
# docs/math/*.png, to look at and commit.
#
# Not part of .ci/run: CI machines have no Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

header=katex-header.html
cdn=https://cdn.jsdelivr.net/npm/
version=$(sed -n "s|.*\"${cdn}katex@\([^/\"]*\)/dist/katex.min.js\".*|\1|p" "$header")
if [ -z "$version" ]; then
    echo "check-math: no KaTeX version in $header" >&2
    exit 1
fi

work=${CARGO_TARGET_DIR:-target}/check-math
mkdir -p "$work/node"
work=$(cd "$work" && pwd)
npm install --prefix "$work/node" --no-save --no-audit --no-fund --loglevel=error \
    "katex@$version" playwright-core@1.65.1

# One source for the header's script: the local copy differs only in where KaTeX comes from.
sed "s|$cdn|/npm/|g" "$header" >"$work/header.html"
# The encoded form keeps a path with spaces in one argument; it also overrides RUSTDOCFLAGS.
CARGO_ENCODED_RUSTDOCFLAGS=$(printf -- '--html-in-header\037%s' "$work/header.html") \
    cargo doc --no-deps --target-dir "$work/target"

node docs/check-math.mjs "$work/target/doc" "$work/node/node_modules" docs/math
