#!/usr/bin/env bash
# Regenerates fuzz/corpus/<target>/ (gitignored) from:
#  1. the test vectors in proto-spec/test-vectors/*.json, when they exist:
#     every "datagram" (hex) seeds the datagram and order targets, every
#     "plaintext" (hex) the body and verifier targets (and order, for order
#     plaintexts), every "client_body" the body and verifier targets;
#  2. examples/gen-seeds.rs: valid knocks, bodies and orders built with
#     proto-spec's testkit for the fixed verifiers of the targets
#     (skip with SPA_FUZZ_NO_GEN=1);
#  3. for netlink_reply: kernel replies as spa-nft reads them (an ack, an
#     error, the end of a dump, a set-element dump of allow4 and block6,
#     a conntrack entry), built below from the uapi layouts.
# Existing corpus files (including what the fuzzer found) are kept.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
corpus="$here/corpus"
mkdir -p "$corpus"/{datagram,body,order,verifier,netlink_reply}

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

python3 - "$corpus/netlink_reply" <<'PY'
import hashlib, pathlib, struct, sys

out = pathlib.Path(sys.argv[1])
NESTED = 0x8000

def attr(ty, payload):
    a = struct.pack("=HH", 4 + len(payload), ty) + payload
    return a + b"\0" * (-len(a) % 4)

def msg(ty, payload, flags=0, seq=1):
    m = struct.pack("=IHHII", 16 + len(payload), ty, flags, seq, 0) + payload
    return m + b"\0" * (-len(m) % 4)

nfgen = lambda family: struct.pack("=BBH", family, 0, 0)
ack = msg(2, struct.pack("=i", 0) + bytes(16))
enoent = msg(2, struct.pack("=i", -2) + bytes(16))
done = msg(3, struct.pack("=i", 0))

def elem(key, timeout_ms, expires_ms):
    return attr(1 | NESTED, attr(1 | NESTED, attr(1, key))
                + attr(4, struct.pack(">Q", timeout_ms))
                + attr(5, struct.pack(">Q", expires_ms)))

allow4_key = bytes([10, 200, 0, 2]) + bytes([6, 0, 0, 0]) + struct.pack(">H", 22) + b"\0\0"
block6_key = bytes.fromhex("fd000200000000010000000000000002")
setelem = (0x0A << 8) | 12  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWSETELEM
dump = msg(setelem, nfgen(1) + attr(1, b"spa\0") + attr(2, b"allow4\0")
           + attr(3 | NESTED, elem(allow4_key, 300_000, 299_000)), flags=2)
dump6 = msg(setelem, nfgen(10) + attr(1, b"spa\0") + attr(2, b"block6\0")
            + attr(3 | NESTED, elem(block6_key, 600_000, 1_000)), flags=2)
tuple_ = attr(1 | NESTED, attr(1 | NESTED, attr(1, bytes([10, 200, 0, 2])) + attr(2, bytes([10, 200, 0, 1])))
              + attr(2 | NESTED, attr(1, b"\x06") + attr(2, struct.pack(">H", 40000))
                     + attr(3, struct.pack(">H", 22))))
ct = msg(1 << 8, nfgen(2) + tuple_ + attr(18, struct.pack(">H", 0)), flags=2)

written = 0
for data in (ack, enoent, done, dump, dump6, ct, dump + dump6 + done, ct + done):
    path = out / ("nl-" + hashlib.sha1(data).hexdigest())
    if not path.exists():
        path.write_bytes(data)
        written += 1
print(f"seed-corpora: {written} new netlink_reply seed file(s)")
PY

if [ "${SPA_FUZZ_NO_GEN:-0}" != 1 ]; then
    (cd "$here" && cargo run --quiet --example gen-seeds -- "$corpus")
fi

for t in "$corpus"/*/; do
    echo "seed-corpora: $(basename "$t"): $(find "$t" -type f | wc -l) file(s)"
done
