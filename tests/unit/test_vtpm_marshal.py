"""Every wire type builds what it parses (round trip), and parses what it builds.

Bad inputs tried: TPM2B sizes above the maximum, list counts above the
maximum, an unknown hash algorithm, a pcrSelect longer than 3 bytes, a
TPM2B_NV_PUBLIC whose size disagrees with its content, a zero-size one.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtpm.constants import ALG, RC
from vtpm.crypto import HASHES
from vtpm.errors import TpmError
from vtpm.marshal import structures as s
from vtpm.marshal.primitives import parse_exact

hash_algs = st.sampled_from(sorted(HASHES))
digests = st.binary(max_size=64)
selections = st.builds(lambda h, sel: {"hash": h, "pcrSelect": sel}, hash_algs, st.binary(min_size=3, max_size=3))
ha = hash_algs.flatmap(lambda a: st.builds(lambda d: {"hashAlg": a, "digest": d}, st.binary(min_size=HASHES[a].size, max_size=HASHES[a].size)))
nv_public = st.fixed_dictionaries({
    "nvIndex": st.integers(0x01000000, 0x01FFFFFF),
    "nameAlg": hash_algs,
    "attributes": st.integers(0, 2**32 - 1),
    "authPolicy": digests,
    "dataSize": st.integers(0, 2048),
})
u32 = st.integers(0, 2**32 - 1)

CASES = [
    (s.TPM2B_DIGEST, digests),
    (s.TPM2B_MAX_BUFFER, st.binary(max_size=1024)),
    (s.TPM2B_NAME, st.binary(max_size=66)),
    (s.TPML_PCR_SELECTION, st.lists(selections, max_size=4)),
    (s.TPML_DIGEST, st.lists(digests, max_size=8)),
    (s.TPMT_HA, ha),
    (s.TPML_DIGEST_VALUES, st.lists(ha, max_size=4)),
    (s.TPMS_NV_PUBLIC, nv_public),
    (s.TPM2B_NV_PUBLIC, nv_public),
    (s.TPMS_TIME_INFO, st.fixed_dictionaries({"time": st.integers(0, 2**64 - 1), "clockInfo": st.fixed_dictionaries({
        "clock": st.integers(0, 2**64 - 1), "resetCount": u32, "restartCount": u32, "safe": st.integers(0, 1)})})),
    (s.TPMT_TK_HASHCHECK, st.fixed_dictionaries({"tag": st.integers(0, 65535), "hierarchy": u32, "digest": digests})),
    (s.TPMS_AUTH_COMMAND, st.fixed_dictionaries({"sessionHandle": u32, "nonce": digests, "sessionAttributes": st.integers(0, 255), "hmac": digests})),
    (s.TPML_TAGGED_TPM_PROPERTY, st.lists(st.fixed_dictionaries({"property": u32, "value": u32}), max_size=20)),
    (s.TPML_ALG_PROPERTY, st.lists(st.fixed_dictionaries({"alg": st.integers(0, 65535), "algProperties": u32}), max_size=20)),
    (s.TPML_HANDLE, st.lists(u32, max_size=20)),
]


@pytest.mark.parametrize("construct,strategy", CASES, ids=[type(c).__name__ + str(i) for i, (c, _) in enumerate(CASES)])
@given(data=st.data())
def test_round_trip(construct, strategy, data) -> None:  # type: ignore[no-untyped-def]
    value = data.draw(strategy)
    raw = construct.build(value)
    parsed = parse_exact(construct, raw)
    assert construct.build(parsed) == raw


@pytest.mark.parametrize(
    "construct,raw,expected",
    [
        (s.TPM2B_DIGEST, b"\x00\x41" + bytes(65), RC.SIZE),
        (s.TPML_DIGEST, (9).to_bytes(4, "big"), RC.SIZE),
        (s.TPMT_HA, b"\x12\x34" + bytes(32), RC.HASH),
        (s.TPMS_PCR_SELECTION, b"\x00\x0b\x04\xff\xff\xff\xff", RC.VALUE),
        (s.TPMS_PCR_SELECTION, b"\x00\x0b\x01\xff", RC.VALUE),  # below PCR_SELECT_MIN
        (s.TPM2B_NV_PUBLIC, b"\x00\x00", RC.SIZE),
        (s.TPM2B_NV_PUBLIC, b"\x00\x10" + bytes(16), RC.HASH),  # nameAlg 0 is checked first
        (s.TPM2B_DIGEST, b"\x00\x02\x01", None),
    ],
)
def test_bad_input_gets_the_right_code(construct, raw, expected) -> None:  # type: ignore[no-untyped-def]
    if expected is None:
        with pytest.raises(Exception):
            parse_exact(construct, raw)
        return
    with pytest.raises(TpmError) as info:
        parse_exact(construct, raw)
    assert info.value.rc == expected


def test_nv_public_with_extra_inner_bytes() -> None:
    inner = s.TPMS_NV_PUBLIC.build({"nvIndex": 0x01000001, "nameAlg": ALG.SHA256, "attributes": 0, "authPolicy": b"", "dataSize": 4})
    with pytest.raises(TpmError) as info:
        parse_exact(s.TPM2B_NV_PUBLIC, (len(inner) + 1).to_bytes(2, "big") + inner + b"\x00")
    assert info.value.rc == RC.SIZE


@given(
    entries=st.lists(
        st.fixed_dictionaries({"sessionHandle": u32, "nonce": digests, "sessionAttributes": st.integers(0, 255), "hmac": digests}),
        min_size=1, max_size=3,
    )
)
def test_engine_auth_area_reader_matches_the_declared_layout(entries) -> None:  # type: ignore[no-untyped-def]
    from vtpm.engine import _parse_sessions

    area = b"".join(s.TPMS_AUTH_COMMAND.build(e) for e in entries)
    sessions, end = _parse_sessions(len(area).to_bytes(4, "big") + area, 0)
    assert end == 4 + len(area)
    assert [(x.handle, x.nonce, x.attributes, x.hmac) for x in sessions] == [
        (e["sessionHandle"], e["nonce"], e["sessionAttributes"], e["hmac"]) for e in entries
    ]
