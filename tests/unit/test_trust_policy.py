"""Image manifests, the trust policy and the quote parser: pure data, checked without a TPM."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vmcrypt.trust.images import ComponentKind, ImageError, ImageManifest, VendorKey, make_image, tampered
from vmcrypt.trust.policy import PolicyError, TrustPolicy
from vtpm.constants import ALG, ST, TPM_GENERATED_VALUE
from vtpm.quote import QuoteError, parse_quote, parse_signature, pcr_digest

VENDOR = VendorKey.generate()
IMAGE = make_image("8.0.2", vendor=VENDOR, vibs=("esx-base", "vsan"), files_per_vib=2)


def test_manifest_json_round_trips_and_refuses_a_bad_vib_signature() -> None:
    manifest = IMAGE.manifest
    assert ImageManifest.from_json(manifest.to_json()) == manifest
    assert [c.kind for c in manifest.components][-3:] == [ComponentKind.KERNEL, ComponentKind.VIB, ComponentKind.VIB]
    bad = tampered(IMAGE, "modified-vib", "vsan").manifest  # new digest, the old signature
    with pytest.raises(ImageError, match="VIB 'vsan' has an invalid vendor signature"):
        ImageManifest.from_json(bad.to_json())
    with pytest.raises(ImageError, match="VIB 'unsigned-community-driver' is unsigned"):
        ImageManifest.from_json(tampered(IMAGE, "unsigned-vib").manifest.to_json())
    data = json.loads(manifest.to_json())
    data["components"][0]["sha256"] = "00"
    with pytest.raises(ImageError, match="32 bytes"):
        ImageManifest.from_json(json.dumps(data))
    for key in ("AAAA", "MAA="):  # valid base64, not a DER SubjectPublicKeyInfo
        data = json.loads(manifest.to_json())
        data["vendor_key"] = key
        with pytest.raises(ImageError, match="vendor key is not a DER public key"):
            ImageManifest.from_json(json.dumps(data))
        with pytest.raises(PolicyError):
            TrustPolicy.from_json(json.dumps({**json.loads(TrustPolicy().to_json()), "images": [data]}))


def test_policy_json_round_trips_and_changes_make_new_policies() -> None:
    root = ec.generate_private_key(ec.SECP256R1())
    from support.pki import make_ca
    ca, _ = make_ca("Vendor Root", root)
    policy = TrustPolicy().with_manufacturer_ca(ca).with_image(IMAGE.manifest).with_trusted_ek(root.public_key())
    again = TrustPolicy.from_json(policy.to_json())
    assert again.manufacturer_cas == policy.manufacturer_cas and again.trusted_eks == policy.trusted_eks
    assert dict(again.images) == dict(policy.images) and again.pcrs == tuple(range(11))
    assert policy.without_image("8.0.2").images == {} and "8.0.2" in policy.images
    with pytest.raises(PolicyError, match="not trusted"):
        policy.without_image("6.7")
    with pytest.raises(PolicyError, match="invalid vendor signature"):
        policy.with_image(tampered(IMAGE, "modified-vib").manifest)
    with pytest.raises(PolicyError, match="must include sha256"):
        TrustPolicy(banks=(ALG.SHA1,))
    for text in ("[]", "{}", json.dumps({**json.loads(policy.to_json()), "trusted_eks": ["zz"]})):
        with pytest.raises(PolicyError):
            TrustPolicy.from_json(text)


def _attest(selection: bytes, *, magic: int = TPM_GENERATED_VALUE, kind: int = ST.ATTEST_QUOTE) -> bytes:
    return (struct.pack(">IH", magic, kind) + b"\x00\x02ab" + b"\x00\x03xyz" + struct.pack(">QIIBQ", 5, 1, 2, 1, 7)
            + selection + b"\x00\x20" + bytes(32))


def test_quote_parse_takes_pcrs_from_the_signed_selection() -> None:
    selection = struct.pack(">I", 2) + struct.pack(">HB", ALG.SHA256, 3) + bytes([0b10000001, 0, 0b100]) \
        + struct.pack(">HB", ALG.SHA1, 3) + bytes([0, 4, 0])
    quote = parse_quote(_attest(selection))
    assert quote.extra_data == b"xyz" and quote.qualified_signer == b"ab" and quote.firmware_version == 7
    assert quote.pcr_select == ((ALG.SHA256, (0, 7, 18)), (ALG.SHA1, (10,)))
    values = {ALG.SHA256: {0: b"a" * 32, 7: b"b" * 32, 18: b"c" * 32}, ALG.SHA1: {10: b"d" * 20}}
    assert pcr_digest(ALG.SHA256, quote.pcr_select, values) == hashlib.sha256(b"a" * 32 + b"b" * 32 + b"c" * 32
                                                                              + b"d" * 20).digest()
    with pytest.raises(KeyError):
        pcr_digest(ALG.SHA256, quote.pcr_select, {**values, ALG.SHA1: {11: b"d" * 20}})


@pytest.mark.parametrize("attest, message", [
    (_attest(struct.pack(">I", 0)), None),
    (_attest(struct.pack(">I", 0), magic=0x1234), "magic 0x00001234"),
    (_attest(struct.pack(">I", 0), kind=ST.ATTEST_CERTIFY), "is not TPM_ST_ATTEST_QUOTE"),
    (_attest(struct.pack(">I", 1) + struct.pack(">HB", 0x99, 3) + bytes(3)), "unsupported bank 0x0099"),
    (_attest(struct.pack(">I", 1) + struct.pack(">HB", ALG.SHA256, 4) + bytes([0, 0, 0, 1])), "above 23"),
    (_attest(struct.pack(">I", 0))[:-5], "pcrDigest of 32 bytes overruns"),
    (_attest(struct.pack(">I", 0)) + b"!", "1 bytes after the structure"),
], ids=["empty-selection", "magic", "type", "bank", "pcr-24", "truncated", "trailing"])
def test_quote_parse_refuses_malformed_structures(attest: bytes, message: str | None) -> None:
    if message is None:
        assert parse_quote(attest).pcr_select == ()
        return
    with pytest.raises(QuoteError, match=message):
        parse_quote(attest)


def test_signature_parse() -> None:
    assert parse_signature(struct.pack(">HH", ALG.RSASSA, ALG.SHA256) + b"\x00\x02hi").sig == b"hi"
    ecdsa = parse_signature(struct.pack(">HH", ALG.ECDSA, ALG.SHA256) + b"\x00\x01r\x00\x01s")
    assert (ecdsa.r, ecdsa.s) == (b"r", b"s")
    with pytest.raises(QuoteError, match="unsupported sigAlg"):
        parse_signature(struct.pack(">HH", ALG.HMAC, ALG.SHA256) + b"\x00\x00")
    with pytest.raises(QuoteError, match="overruns"):
        parse_signature(struct.pack(">HH", ALG.RSASSA, ALG.SHA256) + b"\x01\x00")


def test_vib_signatures_are_the_vendors() -> None:
    other = dataclasses.replace(IMAGE.manifest, vendor_key=VendorKey.generate().public_der)
    with pytest.raises(ImageError, match="invalid vendor signature"):
        other.check()
