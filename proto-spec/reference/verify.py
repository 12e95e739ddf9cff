#!/usr/bin/python3
"""Independent reference verifier for the spa v1 test vectors.

Written from proto-spec/SPEC.md (and test-vectors/README.md for the file
layout), not from the Rust code: it is the "second implementation" of
SPEC §10.  For every vector in knocks.json and orders.json it

  * rebuilds the datagram from the vector's inputs (reproduce = seal_knock,
    seal_order, seal_plaintext) and compares it byte for byte, together with
    the intermediate values the vector gives (plaintext, enc, mac_key,
    signature);
  * verifies the datagram as a receiver configured by the vector's `verify`
    object (SPEC §8.1 steps K1-K14, §8.2 steps O1-O22) and compares the
    verdict, reason, detail and decision fields with `expected`.

Only Python's standard library and the `cryptography` package (Debian
python3-cryptography) are used; HPKE (RFC 9180 base mode) and the
deterministic ECDSA nonces (RFC 6979) are written out here from their RFCs.

Usage: /usr/bin/python3 verify.py [VECTOR_DIR]   (default: ../test-vectors)
Prints one line per disagreement and a summary `N passed, M failed`; exits
1 on any disagreement.
"""

import hashlib
import hmac
import ipaddress
import json
import os
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID


class Refuse(Exception):
    """A refusal (SPEC §8.3): a code and, for malformed/certificate, a sub-reason."""

    def __init__(self, reason, detail=None):
        super().__init__(reason if detail is None else f"{reason}({detail})")
        self.reason = reason
        self.detail = detail


def malformed(sub):
    return Refuse("malformed", sub)


def certificate(sub):
    return Refuse("certificate", sub)


# ---------------------------------------------------------------------------
# SPEC §3: sizes, labels
# ---------------------------------------------------------------------------

VERSION = 0x01
KNOCK_RANGE = (179, 1088)
ORDER_RANGE = (311, 1232)
MIN_BODY, MAX_CLIENT_BODY = 114, 1023
MAX_SERVICES, MAX_SERVICE_NAME, MAX_LIFETIME_S = 8, 32, 86400
LABELS = {
    "knock": {
        "mac": b"spa/v1 knock mac1",
        "info": b"spa/v1 knock",
        "sig": b"spa/v1 knock signature",
    },
    "order": {
        "mac": b"spa/v1 order mac1",
        "info": b"spa/v1 order",
        "sig": b"spa/v1 order signature",
    },
}
MSG_TYPES = {"open-tunnel": 0x01, "request-service": 0x02, "close": 0x03}
MSG_NAMES = {v: k for k, v in MSG_TYPES.items()}


# ---------------------------------------------------------------------------
# SPEC §3.4: HPKE, RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
# HKDF-SHA256, ChaCha20-Poly1305, written out from the RFC.
# ---------------------------------------------------------------------------

KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + bytes.fromhex("002000010003")


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length):
    # RFC 5869 §2.3, general form (L may exceed 32 for the RFC vectors).
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def labeled_extract(suite, salt, label, ikm):
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return hkdf_expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def x25519_raw(sk, pk):
    """X25519(sk, pk); None when the output is all zero (RFC 9180 §7.1.4)."""
    try:
        dh = x25519.X25519PrivateKey.from_private_bytes(sk).exchange(
            x25519.X25519PublicKey.from_public_bytes(pk)
        )
    except ValueError:
        # OpenSSL refuses an all-zero shared secret itself.
        return None
    return None if dh == bytes(32) else dh


def x25519_public(sk):
    return (
        x25519.X25519PrivateKey.from_private_bytes(sk)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def derive_key_pair(ikm):
    dkp_prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, dkp_prk, b"sk", b"", 32)
    return sk, x25519_public(sk)


def extract_and_expand(dh, kem_context):
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)


def key_schedule(shared_secret, info):
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    ctx = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", ctx, 32)
    base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", ctx, 12)
    return key, base_nonce


def hpke_seal(pk_r, info, aad, plaintext, ikm_e):
    sk_e, enc = derive_key_pair(ikm_e)
    dh = x25519_raw(sk_e, pk_r)
    if dh is None:
        raise ValueError("all-zero Diffie-Hellman output: do not send")
    key, nonce = key_schedule(extract_and_expand(dh, enc + pk_r), info)
    return enc, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def hpke_open(sk_r, enc, info, aad, ct):
    dh = x25519_raw(sk_r, enc)
    if dh is None:
        raise Refuse("open_failed")
    key, nonce = key_schedule(extract_and_expand(dh, enc + x25519_public(sk_r)), info)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise Refuse("open_failed") from None


# ---------------------------------------------------------------------------
# SPEC §3.1, §3.3: framing and pre-check MAC
# ---------------------------------------------------------------------------


def mac_key(kind, pk_r):
    return hashlib.sha256(LABELS[kind]["mac"] + pk_r).digest()


def seal(kind, pk_r, plaintext, ikm_e):
    enc, ct = hpke_seal(pk_r, LABELS[kind]["info"], bytes([VERSION]), plaintext, ikm_e)
    head = bytes([VERSION]) + enc + ct
    return head + hmac.new(mac_key(kind, pk_r), head, hashlib.sha256).digest()[:16]


def open_datagram(kind, d, receiver_keys):
    """SPEC §3.6 steps (1)-(4); returns (plaintext, matched pkR)."""
    lo, hi = KNOCK_RANGE if kind == "knock" else ORDER_RANGE
    if len(d) < lo:
        raise Refuse("too_short")
    if len(d) > hi:
        raise Refuse("too_long")
    if d[0] != VERSION:
        raise Refuse("bad_version")
    head, mac = d[:-16], d[-16:]
    for sk in receiver_keys:
        pk = x25519_public(sk)
        want = hmac.new(mac_key(kind, pk), head, hashlib.sha256).digest()[:16]
        if hmac.compare_digest(want, mac):
            return hpke_open(sk, d[1:33], LABELS[kind]["info"], d[:1], d[33:-16]), pk
    raise Refuse("mac_mismatch")


# ---------------------------------------------------------------------------
# Ed25519 point arithmetic (RFC 8032 §5.1), for the small-order rules of
# SPEC §2.2 and §4.4 that a generic library does not apply.
# ---------------------------------------------------------------------------

ED_P = 2**255 - 19
ED_D = (-121665 * pow(121666, ED_P - 2, ED_P)) % ED_P
ED_L = 2**252 + 27742317777372353535851937790883648493
SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def ed_decode(b):
    """A 32-byte encoding to an affine point, or None.  y is taken mod p and
    x = 0 with the sign bit set is accepted (SPEC §4.4)."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, (n & ((1 << 255) - 1)) % ED_P
    u, v = (y * y - 1) % ED_P, (ED_D * y * y + 1) % ED_P
    x = (u * pow(v, 3, ED_P) * pow(u * pow(v, 7, ED_P), (ED_P - 5) // 8, ED_P)) % ED_P
    if (v * x * x - u) % ED_P != 0:
        x = (x * SQRT_M1) % ED_P
        if (v * x * x - u) % ED_P != 0:
            return None
    if x & 1 != sign:
        x = (-x) % ED_P
    return (x, y)


def ed_add(p, q):
    (x1, y1), (x2, y2) = p, q
    t = ED_D * x1 * x2 * y1 * y2 % ED_P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, ED_P - 2, ED_P) % ED_P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, ED_P - 2, ED_P) % ED_P
    return (x3, y3)


def ed_small_order(point):
    q = point
    for _ in range(3):
        q = ed_add(q, q)
    return q == (0, 1)


def ed25519_verify_strict(pk, sig, msg):
    """SPEC §4.4: S < L, neither A nor R of small order, cofactorless
    equation with R compared by its encoding (OpenSSL's check)."""
    if len(sig) != 64 or int.from_bytes(sig[32:], "little") >= ED_L:
        return False
    a, r = ed_decode(pk), ed_decode(sig[:32])
    if a is None or r is None or ed_small_order(a) or ed_small_order(r):
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------------------
# ECDSA P-256 (SPEC §4.4) and RFC 6979 deterministic nonces
# ---------------------------------------------------------------------------

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def p256_verify(point, sig, msg):
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (1 <= r < P256_N and 1 <= s < P256_N):
        return False
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        pub.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def rfc6979_sign_p256(d, msg):
    """ECDSA P-256/SHA-256 with the nonce of RFC 6979 §3.2; `r || s`."""
    h1 = hashlib.sha256(msg).digest()
    e = int.from_bytes(h1, "big")
    x = d.to_bytes(32, "big")
    h = (e % P256_N).to_bytes(32, "big")
    v, k = b"\x01" * 32, b"\x00" * 32
    k = hmac.new(k, v + b"\x00" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    k = hmac.new(k, v + b"\x01" + x + h, hashlib.sha256).digest()
    v = hmac.new(k, v, hashlib.sha256).digest()
    while True:
        v = hmac.new(k, v, hashlib.sha256).digest()
        nonce = int.from_bytes(v, "big")
        if 1 <= nonce < P256_N:
            rx = ec.derive_private_key(nonce, ec.SECP256R1()).public_key().public_numbers().x
            r = rx % P256_N
            s = pow(nonce, -1, P256_N) * (e + r * d) % P256_N
            if r != 0 and s != 0:
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        k = hmac.new(k, v + b"\x00", hashlib.sha256).digest()
        v = hmac.new(k, v, hashlib.sha256).digest()


# ---------------------------------------------------------------------------
# Minimal DER reader: the raw bytes of a certificate's issuer, subject and
# SubjectPublicKeyInfo (SPEC §2.4 hashes the SPKI as it appears).
# ---------------------------------------------------------------------------


def der_tlv(buf, off):
    """(tag, value, end, start) of the element at `off`."""
    start = off
    if off + 2 > len(buf):
        raise ValueError("truncated DER")
    tag, n = buf[off], buf[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or off + k > len(buf):
            raise ValueError("bad DER length")
        n = int.from_bytes(buf[off : off + k], "big")
        off += k
    if off + n > len(buf):
        raise ValueError("truncated DER")
    return tag, buf[off : off + n], off + n, start


def der_children(value):
    out, off = [], 0
    while off < len(value):
        tag, val, end, start = der_tlv(value, off)
        out.append((tag, val, value[start:end]))
        off = end
    return out


def cert_raw_fields(der):
    """issuer, subject, spki (full TLVs) of a DER certificate."""
    tag, cert, end, _ = der_tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a certificate")
    tbs = der_children(der_children(cert)[0][1])
    if tbs[0][0] == 0xA0:
        tbs = tbs[1:]
    # serial, signature, issuer, validity, subject, spki
    return {"issuer": tbs[2][2], "subject": tbs[4][2], "spki": tbs[5][2]}


OID_ED25519 = bytes.fromhex("06032b6570")
OID_EC = bytes.fromhex("06072a8648ce3d0201")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")


def client_key(spki):
    """SPEC §2.2: ('ed25519', 32 bytes) or ('p256', 65-byte point)."""
    parts = der_children(der_tlv(spki, 0)[1])
    alg = der_children(parts[0][1])
    bits = parts[1]
    if bits[0] != 0x03 or not bits[1] or bits[1][0] != 0:
        raise certificate("unsupported_key")
    key = bits[1][1:]
    if alg[0][2] == OID_ED25519 and len(alg) == 1:
        point = ed_decode(key)
        if len(key) != 32 or point is None or ed_small_order(point):
            raise certificate("unsupported_key")
        return ("ed25519", key)
    if alg[0][2] == OID_EC and len(alg) == 2 and alg[1][2] == OID_P256:
        if len(key) != 65 or key[0] != 0x04:
            raise certificate("unsupported_key")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
        except ValueError:
            raise certificate("unsupported_key") from None
        return ("p256", key)
    raise certificate("unsupported_key")


def parse_client_cert(der):
    """K8/O17: the certificate, its key and IdentityKey (SPEC §2.4)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        raw = cert_raw_fields(der)
    except (ValueError, IndexError):
        raise certificate("bad_der") from None
    key = client_key(raw["spki"])
    return cert, raw, key, hashlib.sha256(raw["spki"]).digest()


def identity_names(cert):
    """SPEC §6.3: subject CNs, then subjectAltName entries in SAN order."""
    names = []
    string_types = {"UTF8String", "PrintableString", "IA5String", "NumericString"}
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if attr._type.name in string_types:
            names.append("cn:" + attr.value)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = []
    for gn in san:
        if isinstance(gn, x509.RFC822Name):
            names.append("email:" + gn.value)
        elif isinstance(gn, x509.DNSName):
            names.append("dns:" + gn.value)
        elif isinstance(gn, x509.UniformResourceIdentifier):
            names.append("uri:" + gn.value)
    return names


# ---------------------------------------------------------------------------
# SPEC §6.1: chain and CRLs
# ---------------------------------------------------------------------------


def verify_signed(issuer_spki_der, signature, data, hash_alg):
    """A certificate's or CRL's signature by the issuer's key."""
    pub = serialization.load_der_public_key(issuer_spki_der)
    try:
        if isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, data)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, data, ec.ECDSA(hash_alg))
        elif isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, data, padding.PKCS1v15(), hash_alg)
        else:
            return False
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def utc_seconds(dt):
    import calendar

    return calendar.timegm(dt.utctimetuple())


CRITICAL_OK = {"2.5.29.15", "2.5.29.37", "2.5.29.19", "2.5.29.17", "2.5.29.30", "2.5.29.31"}


def well_formed(cert):
    """SPEC §6.1 well-formedness of the end entity, else bad_der."""
    try:
        outer = der_children(der_tlv(cert.public_bytes(serialization.Encoding.DER), 0)[1])
        tbs = der_children(outer[0][1])
        inner_alg = tbs[2][2] if tbs[0][0] == 0xA0 else tbs[1][2]
        exts = cert.extensions
    except (ValueError, x509.DuplicateExtension):
        raise certificate("bad_der") from None
    if cert.version != x509.Version.v3 or inner_alg != outer[1][2]:
        raise certificate("bad_der")
    if any(e.critical and e.oid.dotted_string not in CRITICAL_OK for e in exts):
        raise certificate("bad_der")


def issuer_independent_checks(cert, t, end_entity):
    """Validity, basicConstraints, EKU of one certificate (SPEC §6.1 rule 1)."""
    if t < utc_seconds(cert.not_valid_before):
        raise certificate("not_yet_valid")
    if t > utc_seconds(cert.not_valid_after):
        raise certificate("expired")
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        bc = None
    if end_entity and bc is not None and bc.ca:
        raise certificate("other")
    if not end_entity and (bc is None or not bc.ca):
        raise certificate("other")
    try:
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in list(eku):
        raise certificate("wrong_usage")


def check_revocation(cert, raw, issuer_cert, crls, t):
    """SPEC §6.1 rule 4 for one certificate issued by `issuer_cert`."""
    crl = next((c for c in crls if c["issuer"] == raw["issuer"]), None)
    if crl is None:
        return  # unknown status: allowed (the vectors' configuration)
    c = crl["crl"]
    if not verify_signed(
        issuer_cert["raw"]["spki"], c.signature, c.tbs_certlist_bytes, c.signature_hash_algorithm
    ):
        raise certificate("other")
    if t >= utc_seconds(c.next_update):
        raise certificate("crl_expired")
    if not issuer_cert.get("anchor"):
        # An intermediate issuer must allow cRLSign; an anchor's key usage
        # is not checked (SPEC §6.1 rule 6).
        try:
            ku = issuer_cert["cert"].extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
            if not ku.crl_sign:
                raise certificate("other")
        except x509.ExtensionNotFound:
            pass
    if c.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise certificate("revoked")


def validate_chain(cert, raw, anchors, crls, now_ms):
    """SPEC §6.1 for a path end entity -> configured anchor (the vectors
    configure no intermediates)."""
    t = now_ms // 1000
    well_formed(cert)
    issuer_independent_checks(cert, t, end_entity=True)
    candidates = [a for a in anchors if a["raw"]["subject"] == raw["issuer"]]
    if not candidates:
        raise certificate("unknown_issuer")
    errors = []
    for anchor in candidates:
        try:
            if not verify_signed(
                anchor["raw"]["spki"],
                cert.signature,
                cert.tbs_certificate_bytes,
                cert.signature_hash_algorithm,
            ):
                raise certificate("other")
            check_revocation(cert, raw, anchor, crls, t)
            return
        except Refuse as e:
            errors.append(e)
    raise errors[0]


def load_trust(v):
    anchors = []
    for h in v["ca_certificates"]:
        der = bytes.fromhex(h)
        anchors.append(
            {"cert": x509.load_der_x509_certificate(der), "raw": cert_raw_fields(der), "anchor": True}
        )
    crls = []
    for h in v["crls"]:
        der = bytes.fromhex(h)
        crl = x509.load_der_x509_crl(der)
        if crl.next_update is None:
            raise ValueError("configuration: a CRL without nextUpdate is refused (SPEC §6.1)")
        issuer = der_children(der_children(der_tlv(der, 0)[1])[0][1])
        # TBSCertList: version, signature, issuer, ...
        issuer_raw = issuer[2][2] if issuer[0][0] == 0x02 else issuer[1][2]
        if not any(a["raw"]["subject"] == issuer_raw for a in anchors):
            raise ValueError("configuration: a CRL from an unknown CA (SPEC §6.1)")
        crls.append({"crl": crl, "issuer": issuer_raw})
    return anchors, crls


# ---------------------------------------------------------------------------
# SPEC §4.2: body parser; §5.1: order parser
# ---------------------------------------------------------------------------


class Reader:
    def __init__(self, b):
        self.b, self.off = b, 0

    def take(self, n):
        if self.off + n > len(self.b):
            raise malformed("truncated")
        out = self.b[self.off : self.off + n]
        self.off += n
        return out

    def u(self, n):
        return int.from_bytes(self.take(n), "big")

    def left(self):
        return len(self.b) - self.off


def parse_address(kind, raw):
    if kind == 0x04:
        a = ipaddress.IPv4Address(raw)
        if a == ipaddress.IPv4Address("0.0.0.0") or a.is_multicast or a == ipaddress.IPv4Address("255.255.255.255"):
            raise malformed("bad_address")
        return a
    a = ipaddress.IPv6Address(raw)
    if a == ipaddress.IPv6Address("::") or raw[0] == 0xFF or a.ipv4_mapped is not None:
        raise malformed("bad_address")
    return a


def read_address(r, allowed):
    kind = r.u(1)
    if kind not in allowed:
        raise malformed("bad_address_kind")
    if kind == 0x00:
        return None
    return parse_address(kind, r.take(4 if kind == 0x04 else 16))


NAME_FIRST = set(b"abcdefghijklmnopqrstuvwxyz0123456789")
NAME_CHARS = NAME_FIRST | set(b"-_.")


def parse_body(b):
    if not MIN_BODY <= len(b) <= MAX_CLIENT_BODY:
        raise malformed("bad_body_length")
    r = Reader(b)
    t = r.u(1)
    if t not in MSG_NAMES:
        raise malformed("unknown_message_type")
    body = {"msg_type": t, "timestamp_ms": r.u(8), "nonce": r.take(16)}
    body["session_id"] = r.take(16)
    body["lifetime_s"] = r.u(4)
    body["addr"] = read_address(r, (0x00, 0x04, 0x06))
    count = r.u(1)
    if count > MAX_SERVICES:
        raise malformed("too_many_services")
    services = []
    for _ in range(count):
        name = r.take(r.u(1))
        if not 1 <= len(name) <= MAX_SERVICE_NAME or name[0] not in NAME_FIRST or any(c not in NAME_CHARS for c in name):
            raise malformed("bad_service_name")
        services.append(name.decode())
    body["services"] = services
    if t in (0x01, 0x02):
        if body["lifetime_s"] == 0 or count == 0:
            raise malformed("field_not_allowed")
        if body["lifetime_s"] > MAX_LIFETIME_S:
            raise malformed("bad_lifetime")
    elif body["lifetime_s"] != 0 or count != 0:
        raise malformed("field_not_allowed")
    cert_len = r.u(2)
    if cert_len == 0:
        raise malformed("bad_cert_length")
    if r.left() < cert_len + 64:
        raise malformed("truncated")
    body["cert"] = r.take(cert_len)
    body["signed"] = b[: r.off]
    body["signature"] = r.take(64)
    if r.left():
        raise malformed("trailing_bytes")
    return body


def parse_order(b):
    r = Reader(b)
    if r.u(1) != 0x04:
        raise malformed("unknown_message_type")
    order = {"order_timestamp_ms": r.u(8), "session_id": r.take(16), "lifetime_s": r.u(4)}
    if order["lifetime_s"] > MAX_LIFETIME_S:
        raise malformed("bad_lifetime")
    order["addr"] = read_address(r, (0x04, 0x06))
    n = r.u(2)
    if not MIN_BODY <= n <= MAX_CLIENT_BODY:
        raise malformed("bad_body_length")
    order["client_body"] = r.take(n)
    order["gateway_key"] = r.take(32)
    order["signed"] = b[: r.off]
    order["gateway_signature"] = r.take(64)
    if r.left():
        raise malformed("trailing_bytes")
    return order


# ---------------------------------------------------------------------------
# SPEC §7, §6.4, §4.3
# ---------------------------------------------------------------------------


def freshness(ts, now, v):
    if ts < max(0, now - v["max_age_ms"]):
        raise Refuse("stale")
    if ts > now + v["max_future_skew_ms"]:
        raise Refuse("future_dated")


def floors_of(v):
    return {bytes.fromhex(f["identity_key"]): f["timestamp_ms"] for f in v["replay_floors"]}


def replay_check(ts, identity, v, strict):
    floor = floors_of(v).get(identity)
    g = v.get("global_floor_ms")
    if floor is not None and (ts <= floor if strict else ts < floor):
        raise Refuse("replayed")
    if g is not None and ts <= g:
        raise Refuse("replayed")


def normalize(addr):
    a = ipaddress.ip_address(addr)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a


def authorize(policy, names, services, hosted=None):
    rules = [r for r in policy["rules"] if r["identity"] == "*" or r["identity"] in names]
    if not rules:
        raise Refuse("unknown_identity")
    allowed = set()
    for r in rules:
        allowed |= {"*"} if r["services"] == "*" else set(r["services"])
    judged = services if hosted is None else [s for s in services if s in hosted]
    if services and not judged:
        raise Refuse("unauthorized_service")
    if "*" not in allowed and any(s not in allowed for s in judged):
        raise Refuse("unauthorized_service")
    return judged


def client_signature_ok(key, pk_r, body):
    transcript = LABELS["knock"]["sig"] + pk_r + body["signed"]
    if key[0] == "ed25519":
        return ed25519_verify_strict(key[1], body["signature"], transcript)
    return p256_verify(key[1], body["signature"], transcript)


# ---------------------------------------------------------------------------
# SPEC §8.1: knock
# ---------------------------------------------------------------------------


def verify_knock(d, v):
    sk = bytes.fromhex(v["receiver_private_key"])
    now = v["now_ms"]
    plaintext, pk_r = open_datagram("knock", d, [sk])  # K1-K5
    body = parse_body(plaintext)  # K6
    freshness(body["timestamp_ms"], now, v)  # K7
    cert, raw, key, identity = parse_client_cert(body["cert"])  # K8
    replay_check(body["timestamp_ms"], identity, v, strict=True)  # K9
    anchors, crls = load_trust(v)
    validate_chain(cert, raw, anchors, crls, now)  # K10
    if not client_signature_ok(key, pk_r, body):  # K11
        raise Refuse("bad_signature")
    policy = v["policy"]
    source = normalize(v["source"])
    if body["addr"] is None:  # K12
        if not policy["allow_source_mode"]:
            raise Refuse("source_mode_not_allowed")
        open_for = source
    else:
        open_for = body["addr"]
        if policy["require_source_match"] and open_for != source:
            raise Refuse("wrong_source_address")
    names = identity_names(cert)
    services = authorize(policy, names, body["services"])  # K13
    lifetime = min(body["lifetime_s"], policy["max_lifetime_s"])
    return {
        "verdict": "accept",
        "msg_type": MSG_NAMES[body["msg_type"]],
        "identity_key": identity.hex(),
        "names": names,
        "open_for": str(open_for),
        "services": services,
        "lifetime_s": lifetime,
        "session_id": body["session_id"].hex(),
    }


# ---------------------------------------------------------------------------
# SPEC §8.2: order
# ---------------------------------------------------------------------------

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def verify_order(d, v):
    sk = bytes.fromhex(v["receiver_private_key"])
    now = v["now_ms"]
    plaintext, pk_red = open_datagram("order", d, [sk])  # O1-O5
    order = parse_order(plaintext)  # O6
    gateway = next(
        (g for g in v["gateways"] if bytes.fromhex(g["signing_public_key"]) == order["gateway_key"]),
        None,
    )
    if gateway is None:  # O7
        raise Refuse("unknown_gateway")
    freshness(order["order_timestamp_ms"], now, v)  # O8
    gateway_identity = hashlib.sha256(ED25519_SPKI_PREFIX + order["gateway_key"]).digest()
    replay_check(order["order_timestamp_ms"], gateway_identity, v, strict=True)  # O9
    if not ed25519_verify_strict(  # O10
        order["gateway_key"],
        order["gateway_signature"],
        LABELS["order"]["sig"] + pk_red + order["signed"],
    ):
        raise Refuse("bad_gateway_signature")
    if order["addr"] != normalize(v["source"]):  # O11
        raise Refuse("wrong_source_address")
    body = parse_body(order["client_body"])  # O12
    if body["msg_type"] not in (0x02, 0x03):  # O13
        raise Refuse("wrong_message_type")
    if body["session_id"] != order["session_id"]:  # O14
        raise Refuse("session_mismatch")
    if (body["msg_type"] == 0x03) != (order["lifetime_s"] == 0):  # O15
        raise malformed("field_not_allowed")
    freshness(body["timestamp_ms"], now, v)  # O16
    cert, raw, key, identity = parse_client_cert(body["cert"])  # O17
    replay_check(body["timestamp_ms"], identity, v, strict=False)  # O18
    anchors, crls = load_trust(v)
    validate_chain(cert, raw, anchors, crls, now)  # O19
    green_keys = gateway["receiver_public_key"]
    green_keys = [green_keys] if isinstance(green_keys, str) else green_keys
    if not any(client_signature_ok(key, bytes.fromhex(k), body) for k in green_keys):  # O20
        raise Refuse("bad_signature")
    names = identity_names(cert)
    policy = v["policy"]
    services = authorize(policy, names, body["services"], v.get("hosted_services"))  # O21
    lifetime = min(order["lifetime_s"], body["lifetime_s"], policy["max_lifetime_s"])
    return {
        "verdict": "accept",
        "action": "open" if body["msg_type"] == 0x02 else "close",
        "gateway_identity_key": gateway_identity.hex(),
        "client_identity_key": identity.hex(),
        "client_names": names,
        "services": services,
        "lifetime_s": lifetime,
        "open_for": str(order["addr"]),
    }


# ---------------------------------------------------------------------------
# Rebuilding datagrams from inputs (SPEC §10)
# ---------------------------------------------------------------------------


def load_client_private_key(inputs):
    """The raw key; the PKCS#8 form is RFC 5958 v2 for Ed25519, which
    OpenSSL refuses, so the README gives `client_private_key_raw` too.
    Both are read and must agree."""
    raw = bytes.fromhex(inputs["client_private_key_raw"])
    pkcs8 = bytes.fromhex(inputs["client_private_key_pkcs8"])
    # PrivateKeyInfo/OneAsymmetricKey: version, algorithm, privateKey, ...
    fields = der_children(der_tlv(pkcs8, 0)[1])
    inner = fields[2][1]
    if inputs["client_key_algorithm"] == "ed25519":
        seed = der_tlv(inner, 0)[1]
    else:
        # ECPrivateKey: version, privateKey OCTET STRING, ...
        seed = der_children(der_tlv(inner, 0)[1])[1][1]
    if seed != raw:
        raise ValueError("client_private_key_raw differs from the PKCS#8 key")
    return raw


def encode_address(open_for):
    if open_for == "source":
        return b"\x00"
    a = ipaddress.ip_address(open_for)
    return (b"\x04" if a.version == 4 else b"\x06") + a.packed


def build_knock_body(inputs, pk_r):
    signed = (
        bytes([MSG_TYPES[inputs["msg_type"]]])
        + inputs["timestamp_ms"].to_bytes(8, "big")
        + bytes.fromhex(inputs["nonce"])
        + bytes.fromhex(inputs["session_id"])
        + inputs["lifetime_s"].to_bytes(4, "big")
        + encode_address(inputs["open_for"])
        + bytes([len(inputs["services"])])
        + b"".join(bytes([len(s)]) + s.encode() for s in inputs["services"])
    )
    cert = bytes.fromhex(inputs["client_certificate"])
    signed += len(cert).to_bytes(2, "big") + cert
    key = load_client_private_key(inputs)
    transcript = LABELS["knock"]["sig"] + pk_r + signed
    if inputs["client_key_algorithm"] == "ed25519":
        sig = ed25519.Ed25519PrivateKey.from_private_bytes(key).sign(transcript)
    else:
        sig = rfc6979_sign_p256(int.from_bytes(key, "big"), transcript)
    return signed + sig


def build_order(inputs):
    seed = bytes.fromhex(inputs["gateway_signing_seed"])
    gk = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    gpk = gk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if gpk.hex() != inputs["gateway_signing_public_key"]:
        raise ValueError("gateway_signing_public_key is not the seed's key")
    body = bytes.fromhex(inputs["client_body"])
    signed = (
        b"\x04"
        + inputs["order_timestamp_ms"].to_bytes(8, "big")
        + bytes.fromhex(inputs["session_id"])
        + inputs["lifetime_s"].to_bytes(4, "big")
        + encode_address(inputs["open_for"])
        + len(body).to_bytes(2, "big")
        + body
        + gpk
    )
    pk_red = bytes.fromhex(inputs["receiver_public_key"])
    return signed + gk.sign(LABELS["order"]["sig"] + pk_red + signed)


def rebuild(vec):
    """Rebuilds the datagram; returns a list of disagreements."""
    how, inputs, kind = vec["reproduce"], vec["inputs"], vec["kind"]
    inter = vec.get("intermediate", {})
    problems = []
    pk_r = bytes.fromhex(inputs["receiver_public_key"])
    if "receiver_private_key" in inputs and x25519_public(
        bytes.fromhex(inputs["receiver_private_key"])
    ) != pk_r:
        problems.append("receiver_public_key is not X25519(receiver_private_key, 9)")
    if how == "none":
        return problems
    if how == "seal_knock":
        plaintext = build_knock_body(inputs, pk_r)
    elif how == "seal_order":
        plaintext = build_order(inputs)
    elif how == "seal_plaintext":
        plaintext = bytes.fromhex(inter["plaintext"])
    else:
        return problems + [f"unknown reproduce mode {how!r}"]
    ikm = bytes.fromhex(inputs["ikm_e"])
    checks = {
        "plaintext": plaintext,
        "enc": derive_key_pair(ikm)[1],
        "mac_key": mac_key(kind, pk_r),
    }
    if "signature" in inter:
        checks["signature"] = plaintext[-64:]
    for name, value in checks.items():
        if name in inter and inter[name] != value.hex():
            problems.append(f"intermediate {name} differs")
    if seal(kind, pk_r, plaintext, ikm).hex() != vec["datagram"]:
        problems.append("rebuilt datagram differs")
    return problems


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def verdict(vec):
    d = bytes.fromhex(vec["datagram"])
    try:
        if vec["kind"] == "knock":
            return verify_knock(d, vec["verify"])
        return verify_order(d, vec["verify"])
    except Refuse as e:
        out = {"verdict": "refuse", "reason": e.reason}
        if e.detail is not None:
            out["detail"] = e.detail
        return out


def check(vec):
    problems = rebuild(vec)
    got = verdict(vec)
    if got != vec["expected"]:
        problems.append(f"verdict {json.dumps(got, sort_keys=True)} != expected {json.dumps(vec['expected'], sort_keys=True)}")
    return problems


def rfc_anchors():
    """The building blocks against their RFCs' own test vectors, so that this
    verifier does not rest on the spa vectors alone.  Returns failures."""
    h = bytes.fromhex
    failures = []
    # RFC 9180 A.2.1, base mode, sequence number 0.
    sk_r = h("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb")
    enc = h("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
    if derive_key_pair(h("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b"))[1] != enc:
        failures.append("RFC 9180 A.2.1 DeriveKeyPair")
    try:
        pt = hpke_open(
            sk_r,
            enc,
            b"Ode on a Grecian Urn",
            b"Count-0",
            h(
                "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db"
                "21993c62ce81883d2dd1b51a28"
            ),
        )
    except Refuse:
        pt = None
    if pt != b"Beauty is truth, truth beauty":
        failures.append("RFC 9180 A.2.1 Open")
    # RFC 8032 §7.1 TEST 1-3.
    for sk, pk, msg, sig in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ]:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(h(sk))
        if key.sign(h(msg)).hex() != sig or not ed25519_verify_strict(h(pk), h(sig), h(msg)):
            failures.append(f"RFC 8032 7.1 key {pk[:8]}")
    # RFC 6979 A.2.5, P-256 with SHA-256.
    x = int("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721", 16)
    for msg, rs in [
        (
            b"sample",
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
            "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
        ),
        (
            b"test",
            "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367"
            "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083",
        ),
    ]:
        if rfc6979_sign_p256(x, msg).hex() != rs:
            failures.append(f"RFC 6979 A.2.5 {msg.decode()}")
    return failures


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    vector_dir = argv[1] if len(argv) > 1 else os.path.join(here, "..", "test-vectors")
    anchors = rfc_anchors()
    for a in anchors:
        print(f"FAIL anchor {a}")
    if not anchors:
        print("RFC anchors (9180 A.2.1, 8032 7.1, 6979 A.2.5): ok")
    passed = failed = 0
    for file in ("knocks.json", "orders.json"):
        with open(os.path.join(vector_dir, file), encoding="utf-8") as f:
            vectors = json.load(f)["vectors"]
        for vec in vectors:
            try:
                problems = check(vec)
            except Exception as e:  # a crash is a disagreement too
                problems = [f"exception {type(e).__name__}: {e}"]
            if problems:
                failed += 1
                for p in problems:
                    print(f"FAIL {file} {vec['name']}: {p}")
            else:
                passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or anchors or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
