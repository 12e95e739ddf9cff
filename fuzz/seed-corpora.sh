#!/usr/bin/env bash
# Regenerates fuzz/corpus/<target>/ (gitignored) from:
#  1. the test vectors in proto-spec/test-vectors/*.json, when they exist:
#     every "datagram" (hex) seeds the datagram and order targets, every
#     "plaintext" (hex) the body and verifier targets (and order, for order
#     plaintexts), every "client_body" the body and verifier targets;
#  2. examples/gen-seeds.rs: valid knocks, bodies and orders built with
#     proto-spec's testkit for the fixed verifiers of the targets
#     (skip with SPA_FUZZ_NO_GEN=1).
# Existing corpus files (including what the fuzzer found) are kept.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
corpus="$here/corpus"
mkdir -p "$corpus"/{datagram,body,order,verifier}

python3 - "$root/proto-spec/test-vectors" "$corpus" <<'PY'
import hashlib, json, pathlib, sys

vectors, corpus = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = sorted(vectors.glob("*.json")) if vectors.is_dir() else []
if not files:
    print(f"seed-corpora: no test vectors in {vectors}; skipping them")
    sys.exit(0)

# An order's plaintext also seeds the order target (it parses plaintexts
# too), and the client body inside an order the body and verifier targets.
TARGETS = {
    "datagram": ("datagram", "order"),
    "plaintext": ("body", "verifier", "order"),
    "client_body": ("body", "verifier"),
}
written = 0

def walk(node):
    """Yields every JSON object, however deeply nested."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)

for f in files:
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        print(f"seed-corpora: {f.name}: unreadable ({e}); skipped")
        continue
    for obj in walk(doc):
        for field, targets in TARGETS.items():
            value = obj.get(field)
            if not isinstance(value, str):
                continue
            try:
                data = bytes.fromhex(value)
            except ValueError:
                continue
            name = "vec-" + hashlib.sha1(data).hexdigest()
            for t in targets:
                path = corpus / t / name
                if not path.exists():
                    path.write_bytes(data)
                    written += 1
print(f"seed-corpora: {written} new seed file(s) from {len(files)} vector file(s)")
PY

if [ "${SPA_FUZZ_NO_GEN:-0}" != 1 ]; then
    (cd "$here" && cargo run --quiet --example gen-seeds -- "$corpus")
fi

for t in "$corpus"/*/; do
    echo "seed-corpora: $(basename "$t"): $(find "$t" -type f | wc -l) file(s)"
done
