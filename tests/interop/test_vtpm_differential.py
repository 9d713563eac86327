"""Differential tests: the same raw TPM 2.0 commands go to swtpm (libtpms) and to our vTPM over TCP.

Every step sends one command, byte for byte the same, to both servers and
compares the responses: byte-identical for deterministic commands, response
code only where a step says so. A test runs all of its steps even after a
difference, then fails listing every differing command with both responses
in hex. Both servers are fresh TPMs started with Startup(CLEAR) for each test.

TPM_RC_RETRY means "not executed, send it again"; TSS stacks resend such
commands, and so does the harness (at most three times per command) unless a
test turns that off. libtpms answers the first authorization of a
DA-protected entity after Startup with TPM_RC_RETRY (it records "DA used" in
NV first); test_first_da_protected_authorization compares that raw answer.

Needs the `swtpm` binary; without it every test fails (never skips).
VTPM_DIFF_TRACE=1 (with pytest -s) prints every step's two responses.
"""

from __future__ import annotations

import hashlib

from support.differential import RC_RETRY, Differential
from support.tpm_helpers import (
    CC,
    HASH_NAMES,
    TPM_ALG_NULL,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    TPM_ALG_SHA512,
    TPM_ALG_SM3_256,
    TPM_CAP_PCR_PROPERTIES,
    TPM_CAP_PCRS,
    TPM_NT_BITS,
    TPM_NT_COUNTER,
    TPM_NT_EXTEND,
    TPM_RH_ENDORSEMENT,
    TPM_RH_NULL,
    TPM_RH_OWNER,
    TPM_ST_NO_SESSIONS,
    TPM_ST_SESSIONS,
    TPMA_NV_AUTHREAD,
    TPMA_NV_AUTHWRITE,
    TPMA_NV_NO_DA,
    TPMA_NV_OWNERREAD,
    TPMA_NV_OWNERWRITE,
    TPMA_NV_WRITEALL,
    build_command,
    get_capability,
    hash_command,
    nv_define_space,
    nv_extend,
    nv_increment,
    nv_read,
    nv_read_public,
    nv_set_bits,
    nv_undefine_space,
    nv_write,
    pcr_extend,
    pcr_read,
    pcr_reset,
    pw_session,
    response_code,
    startup,
    tpml_pcr_selection,
    u16,
    u32,
)

# ----------------------------------------------------------------------------- command material

SUCCESS = 0x000
RC_SIZE = 0x095
RC_LOCALITY = 0x907
RC_COMMAND_CODE = 0x143
RC_INITIALIZE = 0x100
RC_NV_RANGE = 0x146
RC_NV_UNINITIALIZED = 0x14A
RC_NV_DEFINED = 0x14C
RC_BAD_AUTH_S1 = 0x9A2
RC_AUTH_FAIL_S1 = 0x98E
RC_HANDLE_H1 = 0x18B
RC_AUTH_MISSING = 0x125
RC_AUTH_UNAVAILABLE = 0x12F
RC_VALUE_P2 = 0x2C4

BANKS = (TPM_ALG_SHA1, TPM_ALG_SHA256)
ALL_BANKS = (TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512)


def known_digest(alg: int, label: str) -> bytes:
    return hashlib.new(HASH_NAMES[alg], label.encode()).digest()


# ----------------------------------------------------------------------------- PCRs


def test_pcr_extend_and_read(tpms: Differential) -> None:
    def read_all(when: str) -> None:
        tpms.check(f"PCR_Read sha1+sha256 PCR 16,23 {when}", pcr_read([(a, [16, 23]) for a in BANKS]), ref_rc=SUCCESS)
        for alg in ALL_BANKS:
            tpms.check(f"PCR_Read {HASH_NAMES[alg]} PCR 0-7 {when}", pcr_read([(alg, range(8))]), ref_rc=SUCCESS)

    read_all("(fresh)")

    for pcr in (16, 23, *range(8)):
        digests = [(alg, known_digest(alg, f"pcr{pcr}-first")) for alg in BANKS]
        tpms.check(f"PCR_Extend PCR {pcr} sha1+sha256", pcr_extend(pcr, digests), ref_rc=SUCCESS)
    read_all("after one extend each")

    # a second round: sha256 only, sha1 only, both banks in the other order, the same PCR twice
    tpms.check("PCR_Extend PCR 16 sha256 only",
               pcr_extend(16, [(TPM_ALG_SHA256, known_digest(TPM_ALG_SHA256, "pcr16-second"))]), ref_rc=SUCCESS)
    tpms.check("PCR_Extend PCR 23 sha1 only",
               pcr_extend(23, [(TPM_ALG_SHA1, known_digest(TPM_ALG_SHA1, "pcr23-second"))]), ref_rc=SUCCESS)
    tpms.check("PCR_Extend PCR 3 sha256 then sha1",
               pcr_extend(3, [(alg, known_digest(alg, "pcr3-second")) for alg in reversed(BANKS)]), ref_rc=SUCCESS)
    tpms.check("PCR_Extend PCR 7 all four banks",
               pcr_extend(7, [(alg, known_digest(alg, "pcr7-all")) for alg in ALL_BANKS]), ref_rc=SUCCESS)
    tpms.check("PCR_Extend PCR 7 again, session attributes 0 (continueSession clear)",
               pcr_extend(7, [(alg, known_digest(alg, "pcr7-again")) for alg in BANKS], attributes=0), ref_rc=SUCCESS)
    read_all("after second round")

    tpms.check("PCR_Read sha256 all 24 PCRs (more than 8 digests)", pcr_read([(TPM_ALG_SHA256, range(24))]))
    tpms.check("PCR_Read PCR 16 in all four banks", pcr_read([(alg, [16]) for alg in ALL_BANKS]))
    tpms.check("PCR_Read sha1 PCR 0-7 + sha256 PCR 16,23 (10 digests)",
               pcr_read([(TPM_ALG_SHA1, range(8)), (TPM_ALG_SHA256, [16, 23])]))
    tpms.check("PCR_Read empty selection list", pcr_read([]))
    tpms.check("PCR_Read sha256 with nothing selected", pcr_read([(TPM_ALG_SHA256, [])]))
    tpms.check("PCR_Read sha256 PCR 16 with sizeofSelect 4", pcr_read([(TPM_ALG_SHA256, [16])], size_of_select=4))
    tpms.check("PCR_Read sha256 PCR 0 with sizeofSelect 1", pcr_read([(TPM_ALG_SHA256, [0])], size_of_select=1))
    tpms.check("PCR_Read sm3_256 bank (not implemented)", pcr_read([(TPM_ALG_SM3_256, [0])]))

    tpms.check("PCR_Reset PCR 16 (resettable from locality 0)", pcr_reset(16), ref_rc=SUCCESS)
    tpms.check("PCR_Read sha1+sha256 PCR 16,23 after PCR_Reset 16", pcr_read([(a, [16, 23]) for a in BANKS]))
    tpms.check("PCR_Extend TPM_RH_NULL", pcr_extend(TPM_RH_NULL, [(TPM_ALG_SHA256, bytes(32))]), ref_rc=SUCCESS)
    tpms.check("PCR_Extend PCR 24 (beyond the last PCR)", pcr_extend(24, [(TPM_ALG_SHA256, bytes(32))]))
    tpms.check("PCR_Extend PCR 5 sha256 digest one byte short",
               pcr_extend(5, [(TPM_ALG_SHA256, bytes(31))]))
    tpms.check("PCR_Extend PCR 5 wrong password", pcr_extend(5, [(TPM_ALG_SHA256, bytes(32))], password=b"x"),
               mode="rc")
    tpms.check("PCR_Read sha1+sha256 PCR 0-3 at the end", pcr_read([(a, range(4)) for a in BANKS]))
    tpms.assert_identical()


def test_pcr_locality_rules(tpms: Differential) -> None:
    tpms.check("PCR_Reset PCR 0 from locality 0", pcr_reset(0), ref_rc=RC_LOCALITY)
    tpms.check("PCR_Reset PCR 17 from locality 0", pcr_reset(17), ref_rc=RC_LOCALITY)
    tpms.check("PCR_Extend PCR 17 from locality 0", pcr_extend(17, [(TPM_ALG_SHA256, bytes(32))]), ref_rc=RC_LOCALITY)
    tpms.check("PCR_Reset PCR 23 from locality 0", pcr_reset(23), ref_rc=SUCCESS)
    for locality, pcrs in ((3, (0, 16, 17, 20, 21, 22, 23)), (2, (19, 20, 21)), (4, (17, 18, 20))):
        tpms.set_locality(locality)
        for pcr in pcrs:
            tpms.check(f"PCR_Extend PCR {pcr} from locality {locality}",
                       pcr_extend(pcr, [(TPM_ALG_SHA256, known_digest(TPM_ALG_SHA256, f"loc{locality}-{pcr}"))]))
            tpms.check(f"PCR_Reset PCR {pcr} from locality {locality}", pcr_reset(pcr))
    tpms.set_locality(0)
    tpms.check("PCR_Read sha256 PCR 16-23 after the locality steps", pcr_read([(TPM_ALG_SHA256, range(16, 24))]))
    tpms.assert_identical()


# ----------------------------------------------------------------------------- capabilities


def test_get_capability_pcrs(tpms: Differential) -> None:
    tpms.check("GetCapability TPM_CAP_PCRS", get_capability(TPM_CAP_PCRS, 0, 1), ref_rc=SUCCESS)
    tpms.check("GetCapability TPM_CAP_PCRS with property 5 (must be 0)", get_capability(TPM_CAP_PCRS, 5, 8),
               ref_rc=RC_VALUE_P2)
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES all", get_capability(TPM_CAP_PCR_PROPERTIES, 0, 64),
               ref_rc=SUCCESS)
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES first 3", get_capability(TPM_CAP_PCR_PROPERTIES, 0, 3))
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES from RESET_L3 (0x08), 4",
               get_capability(TPM_CAP_PCR_PROPERTIES, 0x08, 4))
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES from NO_INCREMENT (0x11), 10",
               get_capability(TPM_CAP_PCR_PROPERTIES, 0x11, 10))
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES from 0x0B (between L4 and NO_INCREMENT)",
               get_capability(TPM_CAP_PCR_PROPERTIES, 0x0B, 2))
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES beyond the last property",
               get_capability(TPM_CAP_PCR_PROPERTIES, 0x20, 4))
    tpms.check("GetCapability TPM_CAP_PCR_PROPERTIES count 0", get_capability(TPM_CAP_PCR_PROPERTIES, 0, 0))
    tpms.assert_identical()


# ----------------------------------------------------------------------------- Hash


def test_hash(tpms: Differential) -> None:
    for alg in ALL_BANKS:
        for length in (0, 1, 55, 64, 1000, 1024):
            data = bytes((i * 7 + length) & 0xFF for i in range(length))
            tpms.check(f"Hash {HASH_NAMES[alg]} {length} bytes, TPM_RH_NULL", hash_command(data, alg), ref_rc=SUCCESS)
    tpms.check("Hash sha256 1025 bytes (above MAX_DIGEST_BUFFER)", hash_command(bytes(1025), TPM_ALG_SHA256))
    tpms.check("Hash sm3_256 (not implemented)", hash_command(b"abc", TPM_ALG_SM3_256))
    tpms.check("Hash TPM_ALG_NULL", hash_command(b"abc", TPM_ALG_NULL))
    tpms.check("Hash sha256, owner hierarchy, data starting with TPM_GENERATED_VALUE (null ticket)",
               hash_command(bytes.fromhex("ff544347") + b"quote-like", TPM_ALG_SHA256, TPM_RH_OWNER), ref_rc=SUCCESS)
    tpms.check("Hash sha256, hierarchy TPM_RS_PW (not a hierarchy)", hash_command(b"abc", TPM_ALG_SHA256, 0x40000009))
    tpms.check("Hash sha256, TPM2B size larger than the data",
               build_command(CC["Hash"], params=u16(10) + b"abc" + u16(TPM_ALG_SHA256) + u32(TPM_RH_NULL)))
    tpms.assert_identical()


# ----------------------------------------------------------------------------- NV

ORDINARY = 0x01000100
COUNTER = 0x01000101
BITS = 0x01000102
EXTEND = 0x01000103
EXTEND_SHA1 = 0x01000104
WRITEALL = 0x01000105
DA_INDEX = 0x01000106
OWNER_ONLY = 0x01000107
UNDEFINED = 0x0100FFFF
INDEX_AUTH = b"nv-secret"
RW = TPMA_NV_OWNERREAD | TPMA_NV_OWNERWRITE | TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE


def test_nv_ordinary(tpms: Differential) -> None:
    tpms.check("NV_DefineSpace ordinary 32 B", nv_define_space(ORDINARY, RW | TPMA_NV_NO_DA, 32, auth=INDEX_AUTH),
               ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic ordinary (unwritten)", nv_read_public(ORDINARY), ref_rc=SUCCESS)
    tpms.check("NV_Read ordinary before any write", nv_read(ORDINARY, 8, auth_handle=TPM_RH_OWNER),
               ref_rc=RC_NV_UNINITIALIZED)
    tpms.check("NV_Write ordinary 16 B at 0 (index auth)",
               nv_write(ORDINARY, bytes(range(16)), 0, password=INDEX_AUTH), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic ordinary (written)", nv_read_public(ORDINARY), ref_rc=SUCCESS)
    tpms.check("NV_Read ordinary 16 B at 0 (owner)", nv_read(ORDINARY, 16, 0, auth_handle=TPM_RH_OWNER),
               ref_rc=SUCCESS)
    tpms.check("NV_Read ordinary all 32 B (half never written)", nv_read(ORDINARY, 32, 0, password=INDEX_AUTH),
               ref_rc=SUCCESS)
    tpms.check("NV_Write ordinary 8 B at 24 (owner)",
               nv_write(ORDINARY, b"ABCDEFGH", 24, auth_handle=TPM_RH_OWNER), ref_rc=SUCCESS)
    tpms.check("NV_Read ordinary 12 B at 20", nv_read(ORDINARY, 12, 20, password=INDEX_AUTH), ref_rc=SUCCESS)
    tpms.check("NV_Read ordinary 0 B at 32", nv_read(ORDINARY, 0, 32, password=INDEX_AUTH))
    tpms.check("NV_Write ordinary 0 B at 32", nv_write(ORDINARY, b"", 32, password=INDEX_AUTH))
    tpms.check("NV_Write ordinary beyond the size (16 B at 20)",
               nv_write(ORDINARY, bytes(16), 20, password=INDEX_AUTH), ref_rc=RC_NV_RANGE)
    tpms.check("NV_Write ordinary 33 B at 0", nv_write(ORDINARY, bytes(33), 0, password=INDEX_AUTH),
               ref_rc=RC_NV_RANGE)
    tpms.check("NV_Write ordinary offset 40 past the end", nv_write(ORDINARY, b"x", 40, password=INDEX_AUTH))
    tpms.check("NV_Read ordinary beyond the size (16 B at 20)", nv_read(ORDINARY, 16, 20, password=INDEX_AUTH),
               ref_rc=RC_NV_RANGE)
    tpms.check("NV_Read ordinary offset 40 past the end", nv_read(ORDINARY, 1, 40, password=INDEX_AUTH))
    tpms.check("NV_Read ordinary wrong password (NO_DA index)", nv_read(ORDINARY, 4, password=b"wrong"),
               mode="rc", ref_rc=RC_BAD_AUTH_S1)
    tpms.check("NV_Write ordinary wrong password (NO_DA index)", nv_write(ORDINARY, b"x", password=b"wrong"),
               mode="rc", ref_rc=RC_BAD_AUTH_S1)
    tpms.check("NV_Read ordinary after the failed writes", nv_read(ORDINARY, 32, password=INDEX_AUTH), ref_rc=SUCCESS)

    tpms.check("NV_DefineSpace ordinary again (already defined)",
               nv_define_space(ORDINARY, RW | TPMA_NV_NO_DA, 32, auth=INDEX_AUTH), ref_rc=RC_NV_DEFINED)
    tpms.check("NV_DefineSpace WRITEALL 8 B", nv_define_space(WRITEALL, RW | TPMA_NV_WRITEALL, 8), ref_rc=SUCCESS)
    tpms.check("NV_Write WRITEALL partial (4 B)", nv_write(WRITEALL, b"1234"), ref_rc=RC_NV_RANGE)
    tpms.check("NV_Write WRITEALL whole (8 B)", nv_write(WRITEALL, b"12345678"), ref_rc=SUCCESS)
    tpms.check("NV_Read WRITEALL", nv_read(WRITEALL, 8), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic WRITEALL", nv_read_public(WRITEALL), ref_rc=SUCCESS)

    tpms.check("NV_DefineSpace owner-only 16 B",
               nv_define_space(OWNER_ONLY, TPMA_NV_OWNERREAD | TPMA_NV_OWNERWRITE, 16), ref_rc=SUCCESS)
    tpms.check("NV_Write owner-only with the index as auth handle", nv_write(OWNER_ONLY, b"data"),
               ref_rc=RC_AUTH_UNAVAILABLE)
    tpms.check("NV_Write owner-only with owner auth", nv_write(OWNER_ONLY, b"data", auth_handle=TPM_RH_OWNER),
               ref_rc=SUCCESS)
    tpms.check("NV_Read owner-only with the index as auth handle", nv_read(OWNER_ONLY, 4),
               ref_rc=RC_AUTH_UNAVAILABLE)

    tpms.check("NV_ReadPublic undefined index", nv_read_public(UNDEFINED), ref_rc=RC_HANDLE_H1)
    tpms.check("NV_Read undefined index", nv_read(UNDEFINED, 4, auth_handle=TPM_RH_OWNER))
    tpms.check("NV_UndefineSpace WRITEALL", nv_undefine_space(WRITEALL), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic WRITEALL after undefine", nv_read_public(WRITEALL), ref_rc=RC_HANDLE_H1)
    tpms.check("NV_DefineSpace ordinary 0 B", nv_define_space(WRITEALL, RW, 0))
    tpms.check("NV_DefineSpace ordinary 2049 B", nv_define_space(0x01000108, RW, 2049))
    tpms.check("NV_DefineSpace with a 33-byte auth value (sha256 name)",
               nv_define_space(0x01000109, RW, 8, auth=bytes(range(33))))
    tpms.check("NV_DefineSpace without owner or auth write/read attributes", nv_define_space(0x0100010A, 0, 8))
    tpms.check("NV_DefineSpace from the endorsement hierarchy", nv_define_space(0x0100010B, RW, 8,
                                                                                 auth_handle=TPM_RH_ENDORSEMENT))
    tpms.check("NV_DefineSpace index handle outside the NV range", nv_define_space(0x81000001, RW, 8))
    tpms.check("NV_DefineSpace sha1 name algorithm", nv_define_space(0x0100010C, RW, 8, name_alg=TPM_ALG_SHA1),
               ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic sha1-named index", nv_read_public(0x0100010C), ref_rc=SUCCESS)
    tpms.assert_identical()


def test_nv_da_protected_wrong_password(tpms: Differential) -> None:
    tpms.check("NV_DefineSpace DA-protected ordinary 8 B", nv_define_space(DA_INDEX, RW, 8, auth=INDEX_AUTH),
               ref_rc=SUCCESS)
    tpms.check("NV_Write DA-protected with its password", nv_write(DA_INDEX, b"12345678", password=INDEX_AUTH),
               ref_rc=SUCCESS)
    tpms.check("NV_Read DA-protected wrong password", nv_read(DA_INDEX, 8, password=b"wrong"), mode="rc",
               ref_rc=RC_AUTH_FAIL_S1)
    tpms.check("NV_Read DA-protected with its password after one failure",
               nv_read(DA_INDEX, 8, password=INDEX_AUTH), ref_rc=SUCCESS)
    tpms.assert_identical()


def test_first_da_protected_authorization(tpms: Differential) -> None:
    """libtpms defers the first DA-protected authorization after Startup with TPM_RC_RETRY (it
    records "DA used" in NV first, an option of the reference implementation); the vTPM writes
    its DA state through on every change and executes the command at once. After a resend
    both TPMs agree."""
    tpms.resend_on_retry = False
    tpms.check("NV_DefineSpace DA-protected ordinary 8 B", nv_define_space(DA_INDEX, RW, 8, auth=INDEX_AUTH),
               ref_rc=SUCCESS)
    first = nv_write(DA_INDEX, b"12345678", password=INDEX_AUTH)
    ours = tpms._send(tpms.ours, "first DA-protected write (vtpm)", first, 10.0)
    ref = tpms._send(tpms.ref, "first DA-protected write (swtpm)", first, 10.0)
    assert isinstance(ours, bytes) and response_code(ours) == SUCCESS
    assert isinstance(ref, bytes) and response_code(ref) in (SUCCESS, RC_RETRY)
    if response_code(ref) == RC_RETRY:
        assert response_code(tpms._send(tpms.ref, "resend", first, 10.0)) == SUCCESS
    tpms.check("NV_Write DA-protected: second DA-protected authorization",
               nv_write(DA_INDEX, b"abcdefgh", password=INDEX_AUTH), ref_rc=SUCCESS)
    tpms.check("NV_Read DA-protected", nv_read(DA_INDEX, 8, password=INDEX_AUTH), ref_rc=SUCCESS)
    tpms.assert_identical()


def test_nv_counter(tpms: Differential) -> None:
    tpms.check("NV_DefineSpace counter", nv_define_space(COUNTER, RW | TPM_NT_COUNTER, 8), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic counter (unwritten)", nv_read_public(COUNTER), ref_rc=SUCCESS)
    tpms.check("NV_Read counter before the first increment", nv_read(COUNTER, 8), ref_rc=RC_NV_UNINITIALIZED)
    tpms.check("NV_Increment counter", nv_increment(COUNTER), ref_rc=SUCCESS)
    tpms.check("NV_Read counter after 1 increment", nv_read(COUNTER, 8), ref_rc=SUCCESS)
    for i in range(3):
        tpms.check(f"NV_Increment counter (owner) #{i + 2}", nv_increment(COUNTER, auth_handle=TPM_RH_OWNER),
                   ref_rc=SUCCESS)
    tpms.check("NV_Read counter after 4 increments", nv_read(COUNTER, 8), ref_rc=SUCCESS)
    tpms.check("NV_Read counter 4 B at offset 4", nv_read(COUNTER, 4, 4), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic counter (written)", nv_read_public(COUNTER), ref_rc=SUCCESS)
    tpms.check("NV_Write on a counter index", nv_write(COUNTER, bytes(8)))
    tpms.check("NV_SetBits on a counter index", nv_set_bits(COUNTER, 1))
    tpms.check("NV_DefineSpace counter of 4 bytes", nv_define_space(0x01000110, RW | TPM_NT_COUNTER, 4))
    tpms.check("NV_UndefineSpace counter", nv_undefine_space(COUNTER), ref_rc=SUCCESS)
    tpms.check("NV_DefineSpace counter again", nv_define_space(COUNTER, RW | TPM_NT_COUNTER, 8), ref_rc=SUCCESS)
    tpms.check("NV_Increment the redefined counter", nv_increment(COUNTER), ref_rc=SUCCESS)
    tpms.check("NV_Read the redefined counter (starts above the deleted one)", nv_read(COUNTER, 8), ref_rc=SUCCESS)
    tpms.assert_identical()


def test_nv_bits(tpms: Differential) -> None:
    tpms.check("NV_DefineSpace bits", nv_define_space(BITS, RW | TPM_NT_BITS, 8), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic bits (unwritten)", nv_read_public(BITS), ref_rc=SUCCESS)
    tpms.check("NV_Read bits before any SetBits", nv_read(BITS, 8), ref_rc=RC_NV_UNINITIALIZED)
    tpms.check("NV_SetBits 0x1", nv_set_bits(BITS, 0x1), ref_rc=SUCCESS)
    tpms.check("NV_Read bits after 0x1", nv_read(BITS, 8), ref_rc=SUCCESS)
    tpms.check("NV_SetBits 0x8000000000000000 (owner)", nv_set_bits(BITS, 1 << 63, auth_handle=TPM_RH_OWNER),
               ref_rc=SUCCESS)
    tpms.check("NV_SetBits 0 (no change)", nv_set_bits(BITS, 0), ref_rc=SUCCESS)
    tpms.check("NV_Read bits after 0x8000000000000000", nv_read(BITS, 8), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic bits (written)", nv_read_public(BITS), ref_rc=SUCCESS)
    tpms.check("NV_Write on a bits index", nv_write(BITS, bytes(8)))
    tpms.check("NV_Increment on a bits index", nv_increment(BITS))
    tpms.check("NV_DefineSpace bits of 16 bytes", nv_define_space(0x01000111, RW | TPM_NT_BITS, 16))
    tpms.assert_identical()


def test_nv_extend(tpms: Differential) -> None:
    tpms.check("NV_DefineSpace extend sha256 32 B", nv_define_space(EXTEND, RW | TPM_NT_EXTEND, 32), ref_rc=SUCCESS)
    tpms.check("NV_DefineSpace extend sha1 20 B",
               nv_define_space(EXTEND_SHA1, RW | TPM_NT_EXTEND, 20, name_alg=TPM_ALG_SHA1), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic extend (unwritten)", nv_read_public(EXTEND), ref_rc=SUCCESS)
    tpms.check("NV_Read extend before any extend", nv_read(EXTEND, 32), ref_rc=RC_NV_UNINITIALIZED)
    tpms.check("NV_Extend sha256 'abc'", nv_extend(EXTEND, b"abc"), ref_rc=SUCCESS)
    tpms.check("NV_Read extend sha256 after 'abc'", nv_read(EXTEND, 32), ref_rc=SUCCESS)
    tpms.check("NV_Extend sha256 100 bytes (owner)", nv_extend(EXTEND, bytes(range(100)), auth_handle=TPM_RH_OWNER),
               ref_rc=SUCCESS)
    tpms.check("NV_Extend sha256 empty data", nv_extend(EXTEND, b""), ref_rc=SUCCESS)
    tpms.check("NV_Read extend sha256 after three extends", nv_read(EXTEND, 32), ref_rc=SUCCESS)
    tpms.check("NV_ReadPublic extend (written)", nv_read_public(EXTEND), ref_rc=SUCCESS)
    tpms.check("NV_Extend sha1 'abc'", nv_extend(EXTEND_SHA1, b"abc"), ref_rc=SUCCESS)
    tpms.check("NV_Read extend sha1", nv_read(EXTEND_SHA1, 20), ref_rc=SUCCESS)
    tpms.check("NV_Write on an extend index", nv_write(EXTEND, bytes(32)))
    tpms.check("NV_DefineSpace extend sha256 of 20 bytes", nv_define_space(0x01000112, RW | TPM_NT_EXTEND, 20))
    tpms.assert_identical()


# ----------------------------------------------------------------------------- malformed and refused commands


def test_error_cases(tpms: Differential) -> None:
    get_random_8 = build_command(CC["GetRandom"], params=u16(8))
    for tag, what in ((0x8000, "TPM_ST_NULL"), (0x00C4, "TPM_ST_RSP_COMMAND")):
        tpms.check(f"bad tag 0x{tag:04x} ({what}) on GetRandom", build_command(CC["GetRandom"], params=u16(8), tag=tag))
    tpms.check("unknown command code 0x000002FF", build_command(0x000002FF))
    tpms.check("unknown vendor command code 0x20000FFF", build_command(0x20000FFF), ref_rc=RC_COMMAND_CODE)
    tpms.check("Startup when already started", startup(), ref_rc=RC_INITIALIZE)

    tpms.check("truncated PCR_Read (selection list cut after the count)",
               build_command(CC["PCR_Read"], params=u32(1) + u16(TPM_ALG_SHA256)))
    tpms.check("truncated PCR_Read (no parameters)", build_command(CC["PCR_Read"]))
    tpms.check("truncated GetRandom (one byte of bytesRequested)", build_command(CC["GetRandom"], params=b"\x00"))
    tpms.check("truncated NV_ReadPublic (2-byte handle)", build_command(CC["NV_ReadPublic"], params=b"\x01\x00"))
    tpms.check("truncated PCR_Extend (no authorization area)",
               build_command(CC["PCR_Extend"], [16], tag=TPM_ST_SESSIONS))
    tpms.check("truncated PCR_Extend (authorization size larger than the rest)",
               build_command(CC["PCR_Extend"], [16], u32(13) + pw_session()[:5], tag=TPM_ST_SESSIONS))
    tpms.check("truncated PCR_Extend (digest cut short)",
               build_command(CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256) + bytes(16), auth=pw_session()))
    tpms.check("truncated GetCapability (property count missing)",
               build_command(CC["GetCapability"], params=u32(TPM_CAP_PCRS) + u32(0)))

    # the size field covers the garbage: the parameters leave bytes over
    garbage = [
        ("PCR_Read with trailing garbage", build_command(CC["PCR_Read"], params=tpml_pcr_selection(
            [(TPM_ALG_SHA256, [16])]) + b"\x00\x01\x02")),
        ("GetCapability with trailing garbage", build_command(CC["GetCapability"], params=u32(TPM_CAP_PCRS) + u32(0)
                                                              + u32(1) + b"\xff")),
        ("PCR_Extend with trailing garbage", build_command(CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256)
                                                           + bytes(32) + b"\xaa", auth=pw_session())),
        ("Hash with trailing garbage", hash_command(b"abc", TPM_ALG_SHA256) + b"\x00"),
    ]
    for name, command in garbage:
        command = command[:2] + u32(len(command)) + command[6:]
        tpms.check(name, command, ref_rc=RC_SIZE)
    tpms.check("GetRandom with trailing garbage, size field fixed",
               get_random_8[:2] + u32(len(get_random_8) + 2) + get_random_8[6:] + b"\x00\x00", ref_rc=RC_SIZE)


    tpms.check("PCR_Reset PCR 0 from locality 0", pcr_reset(0), ref_rc=RC_LOCALITY)
    tpms.check("PCR_Extend with TPM_ST_NO_SESSIONS (authorization missing)",
               build_command(CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256) + bytes(32), tag=TPM_ST_NO_SESSIONS),
               ref_rc=RC_AUTH_MISSING)
    tpms.check("PCR_Read with a password session", build_command(
        CC["PCR_Read"], params=tpml_pcr_selection([(TPM_ALG_SHA256, [16])]), auth=pw_session()))
    tpms.check("PCR_Extend with the password session twice", build_command(
        CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256) + bytes(32), auth=pw_session() + pw_session()))
    tpms.check("PCR_Extend with an unknown session handle", build_command(
        CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256) + bytes(32),
        auth=u32(0x02000000) + u16(0) + b"\x01" + u16(0)))
    tpms.check("PCR_Extend with a 9-byte nonce in the password session", build_command(
        CC["PCR_Extend"], [16], u32(1) + u16(TPM_ALG_SHA256) + bytes(32),
        auth=u32(0x40000009) + u16(9) + bytes(9) + b"\x01" + u16(0)))
    tpms.check("GetCapability unknown capability 0x99", get_capability(0x99, 0, 1))
    tpms.check("NV_ReadPublic of a PCR handle", nv_read_public(0x00000010))
    tpms.check("PCR_Read after the error cases (nothing changed)", pcr_read([(TPM_ALG_SHA256, range(16, 24))]))
    tpms.check("GetRandom 0 bytes", build_command(CC["GetRandom"], params=u16(0)), ref_rc=SUCCESS)
    tpms.assert_identical()


def test_deliberate_deviations_follow_the_spec(tpms: Differential) -> None:
    """Where the vTPM answers differently from swtpm on purpose, it answers what the spec says.

    - A command tag that is not a TPM_ST value: TPM_RC_BAD_TAG (Part 2, 6.9); libtpms
      answers TPM_RC_VALUE.
    - A TPM 1.2 command (tag 0x00C1, e.g. OVMF's GetTicks probe of a TIS TPM): TPM_RC_BAD_TAG
      under a TPM 2.0 header (TPM_ST_NO_SESSIONS), libtpms TPM_RC_VALUE under the same header;
      a TPM 1.2-style answer (tag 0x00C4) makes OVMF take the TPM for a TPM 1.2 and measure nothing.
    - Framing on a byte stream: the vTPM reads exactly commandSize bytes, so bytes after
      a command start the next one; swtpm hands whatever one read() returned to the TPM.
    """
    get_random_8 = build_command(CC["GetRandom"], params=u16(8))
    ours = tpms._send(tpms.ours, "bad tag", build_command(CC["GetRandom"], params=u16(8), tag=0x8003), 10.0)
    assert ours == bytes.fromhex("80010000000a0000001e")
    getticks12 = bytes.fromhex("00c10000000a000000f1")  # OVMF's TPM 1.2 probe
    ours = tpms._send(tpms.ours, "TPM 1.2 tag", getticks12, 10.0)
    ref = tpms._send(tpms.ref, "TPM 1.2 tag", getticks12, 10.0)
    assert ours == bytes.fromhex("80010000000a0000001e")
    assert isinstance(ref, bytes) and ref[:2] == ours[:2] == b"\x80\x01"  # both under a TPM 2.0 tag
    tpms.close()
    ours = tpms._send(tpms.ours, "GetRandom + 4 stray bytes", get_random_8 + b"\xde\xad\xbe\xef", 10.0)
    assert isinstance(ours, bytes) and response_code(ours) == SUCCESS and len(ours) == 20
    tpms.close()
    ours = tpms._send(tpms.ours, "GetRandom again", get_random_8, 10.0)
    assert isinstance(ours, bytes) and response_code(ours) == SUCCESS
