"""Policy sessions in-process: digests from the Part 3 formulas, enforcement.

The tests build raw commands and compute every policy digest, name, cpHash and
session HMAC with hashlib/hmac from the spec (support.policy_spec), never with
the engine's code; the same policies against swtpm and through tpm2-tools are in
interop/test_vtpm_policy_interop.py. Inputs tried for refusal: PolicyOR with 1 and 9 digests or no
matching branch, PolicyLocality 0 and localities that exclude each other, an
HMAC session or an unloaded session where a policy session belongs, unknown and
conflicting command codes, a cpHash of the wrong size or a second different one,
a nameHash after a cpHash, conflicting PolicyNvWritten, a pcrDigest that does
not match, PCRs that change after PolicyPCR, a PolicyNV/PolicyCounterTimer
condition that is false or reads past the end, a wrong nonceTPM or an expired
PolicySecret, trial sessions used for authorization, ADMIN-role commands without
PolicyCommandCode, a wrong locality, cpHash and nameHash that do not match.
"""

from __future__ import annotations

import hmac
import struct

import pytest

from support.clock import FakeClock
from support.policy_terms import *  # noqa: F403 - the policy tests' shared vocabulary
from vtpm.client import TpmClient
from vtpm.engine import Tpm
from vtpm.state import TpmState


# ----------------------------------------------------------------------------- in-process harness


class Client(TpmClient):
    """An in-process TpmClient with raw sends at any locality and the session bookkeeping a caller keeps."""

    def send(self, command: bytes, locality: int = 0) -> bytes:
        self.transport.locality = locality
        return self.transact(command)

    def rc(self, command: bytes, locality: int = 0) -> int:
        return response_code(self.send(command, locality))

    def ok(self, command: bytes, locality: int = 0) -> bytes:
        response = self.send(command, locality)
        assert response_code(response) == 0, describe_rc(response_code(response))
        return response

    def start(self, kind: int, alg: int = TPM_ALG_SHA256) -> tuple[int, bytes]:
        return session_from_response(self.ok(start_auth_session(kind, alg)))

    def flush_sessions(self) -> None:
        """Free every loaded session: the TPM holds three, as libtpms does."""
        self.tpm.volatile.sessions.clear()

    def digest(self, session: int) -> bytes:
        params = self.call(policy_simple("PolicyGetDigest", session)).parameters()
        return params[2 : 2 + int.from_bytes(params[:2], "big")]

    def define(self, index: int, attributes: int, size: int, *, auth: bytes = b"", policy: bytes = b"") -> None:
        self.nv_define(index, attributes, size, auth_handle=TPM_RH_OWNER, auth=auth, policy=policy)


@pytest.fixture
def client(clock: FakeClock) -> Client:
    engine = Tpm(TpmState.manufacture(), clock_ms=clock)
    c = Client(engine)
    c.startup()
    return c


def define_policy_index(client: Client, policy: bytes, attributes: int = POLICY_ATTRS,
                        index: int = POLICY_INDEX, write: bool = True) -> bytes:
    """An index readable only through its policy; written with its password; returns its name."""
    client.define(index, attributes, len(DATA), auth=SECRET, policy=policy)
    if write:
        client.ok(nv_write(index, DATA, password=SECRET))
    return nv_name(index, attributes, len(DATA), policy, written=write)


def nv_read_with(client: Client, session: int, nonce_tpm: bytes, name: bytes, *, auth_value: bytes | None = None,
                 password: bytes | None = None, size: int = len(DATA), offset: int = 0, locality: int = 0,
                 index: int = POLICY_INDEX) -> bytes:
    """NV_Read of an index by itself under a policy session: HMAC (with authValue if given) or password."""
    params = u16(size) + u16(offset)
    nonce_caller = bytes(range(40, 72))
    if password is not None:
        mac = password
    else:
        cp = cp_hash(TPM_ALG_SHA256, "NV_Read", [name, name], params)
        mac = session_hmac(TPM_ALG_SHA256, auth_value or b"", cp, nonce_caller, nonce_tpm, CONTINUE)
    command = build_command(CC["NV_Read"], [index, index], params, auth=auth_command(session, nonce_caller, mac))
    response = client.send(command, locality)
    if response_code(response) == 0:
        out, new_nonce, attributes, resp_mac = split_response(response)
        assert attributes == CONTINUE
        if password is not None:
            assert resp_mac == b""  # PolicyPassword: the response carries no HMAC
        else:
            rp = H(TPM_ALG_SHA256, u32(0), u32(CC["NV_Read"]), out)
            assert resp_mac == session_hmac(TPM_ALG_SHA256, auth_value or b"", rp, new_nonce, nonce_caller, CONTINUE)
        assert out == tpm2b(DATA[offset : offset + size])
    return response


# ----------------------------------------------------------------------------- digests


@pytest.mark.parametrize("alg", [TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384])
def test_every_policy_digest_follows_part3(client: Client, alg: int) -> None:
    trial, _ = client.start(TPM_SE_TRIAL, alg)
    expected = zeros(alg)
    assert client.digest(trial) == expected

    def check(command: bytes, name: str, *args: bytes) -> None:
        nonlocal expected
        client.ok(command)
        expected = step(alg, expected, name, *args)
        assert client.digest(trial) == expected, name

    check(policy_simple("PolicyAuthValue", trial), "PolicyAuthValue")
    check(policy_simple("PolicyPassword", trial), "PolicyAuthValue")  # PolicyPassword records PolicyAuthValue
    check(policy_command_code(trial, CC["NV_Read"]), "PolicyCommandCode", u32(CC["NV_Read"]))
    check(policy_locality(trial, 0x06), "PolicyLocality", u8(0x06))
    check(policy_locality(trial, 0x03), "PolicyLocality", u8(0x03))  # narrows to locality 1
    check(policy_nv_written(trial, 1), "PolicyNvWritten", u8(1))
    cp = H(alg, b"some command")
    check(policy_digest_param("PolicyCpHash", trial, cp), "PolicyCpHash", cp)

    # PolicyPCR: selection as marshaled, then the digest of the current values (PCR 17 starts all ones)
    selections = [(TPM_ALG_SHA256, [0, 1, 17]), (TPM_ALG_SHA1, [7])]
    values = [bytes(32), bytes(32), b"\xff" * 32, bytes(20)]
    check(policy_pcr(trial, b"", selections), "PolicyPCR", tpml_pcr_selection(selections),
          pcr_values_digest(alg, values))
    given = H(alg, b"pcrs elsewhere")  # a trial session takes a given pcrDigest as it is
    check(policy_pcr(trial, given, [(TPM_ALG_SHA256, [3])]), "PolicyPCR",
          tpml_pcr_selection([(TPM_ALG_SHA256, [3])]), given)

    operand, offset = u64(5), 0
    args = H(alg, operand, u16(offset), u16(EO_UNSIGNED_GT))
    check(policy_counter_timer(trial, operand, offset, EO_UNSIGNED_GT), "PolicyCounterTimer", args)

    attrs = TPMA_NV_OWNERREAD | TPMA_NV_OWNERWRITE | TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE
    client.define(0x01500001, attrs, 8)  # unwritten: a trial PolicyNV does not read it
    args = H(alg, operand, u16(0), u16(EO_EQ))
    check(policy_nv(TPM_RH_OWNER, 0x01500001, trial, operand, 0, EO_EQ), "PolicyNV", args,
          nv_name(0x01500001, attrs, 8))

    # PolicySecret: H(H(old || CC || authName) || policyRef); a permanent handle is its own name
    client.ok(policy_secret(TPM_RH_OWNER, trial, policy_ref=b"ref", expiration=-60))
    expected = H(alg, step(alg, expected, "PolicySecret", u32(TPM_RH_OWNER)), b"ref")
    assert client.digest(trial) == expected

    # PolicyOR: a trial session accepts any list; the digest restarts from zeros
    branches = [expected, H(alg, b"other branch")]
    client.ok(policy_or(trial, branches))
    expected = step(alg, zeros(alg), "PolicyOR", *branches)
    assert client.digest(trial) == expected

    client.ok(policy_simple("PolicyRestart", trial))
    assert client.digest(trial) == zeros(alg)
    expected = zeros(alg)
    name_hash = H(alg, b"names")
    check(policy_digest_param("PolicyNameHash", trial, name_hash), "PolicyNameHash", name_hash)

    client.ok(policy_simple("PolicyRestart", trial))
    expected = zeros(alg)
    obj, parent = u16(TPM_ALG_SHA256) + bytes(32), u16(TPM_ALG_SHA256) + b"\x01" * 32
    check(policy_duplication_select(trial, obj, parent, 1), "PolicyDuplicationSelect", obj, parent, u8(1))
    client.ok(policy_simple("PolicyRestart", trial))
    expected = zeros(alg)
    check(policy_duplication_select(trial, obj, parent, 0), "PolicyDuplicationSelect", parent, u8(0))


# ----------------------------------------------------------------------------- enforcement


def test_policy_auth_value_unlocks_an_nv_index(client: Client) -> None:
    policy = step(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_Read"])),
                  "PolicyAuthValue")
    name = define_policy_index(client, policy)

    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_command_code(session, CC["NV_Read"]))
    client.ok(policy_simple("PolicyAuthValue", session))
    assert client.digest(session) == policy
    bad = nv_read_with(client, session, nonce, name, auth_value=b"wrong")
    assert response_code(bad) == RC_BAD_AUTH_S1
    good = nv_read_with(client, session, nonce, name, auth_value=SECRET)
    assert response_code(good) == 0
    nonce = split_response(good)[1]
    # the assertions were used up: the session's policy starts again from zeros
    assert client.digest(session) == zeros()
    assert response_code(nv_read_with(client, session, nonce, name, auth_value=SECRET)) == RC_POLICY_FAIL_S1

    # the command code alone does not match the index's policy
    client.ok(policy_command_code(session, CC["NV_Read"]))
    assert response_code(nv_read_with(client, session, nonce, name)) == RC_POLICY_FAIL_S1
    # PolicyRestart drops the assertions (and the auth-value requirement with them)
    client.ok(policy_simple("PolicyAuthValue", session))
    client.ok(policy_simple("PolicyRestart", session))
    assert client.digest(session) == zeros()
    only_cc = step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_Read"]))
    other = define_policy_index(client, only_cc, index=POLICY_INDEX + 1)
    client.ok(policy_command_code(session, CC["NV_Read"]))
    assert response_code(nv_read_with(client, session, nonce, other, index=POLICY_INDEX + 1)) == 0


def test_policy_password_sends_the_password_in_clear(client: Client) -> None:
    name = define_policy_index(client, step(TPM_ALG_SHA256, zeros(), "PolicyAuthValue"))
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_simple("PolicyPassword", session))
    assert response_code(nv_read_with(client, session, nonce, name, password=b"wrong")) == RC_BAD_AUTH_S1
    assert response_code(nv_read_with(client, session, nonce, name, password=SECRET)) == 0


def test_policy_command_code_is_enforced(client: Client) -> None:
    policy = step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_Read"]))
    attributes = POLICY_ATTRS | TPMA_NV_POLICYWRITE
    name = define_policy_index(client, policy, attributes)
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_command_code(session, CC["NV_Read"]))
    # the digest matches the index's policy, but the session is for NV_Read only
    params = tpm2b(b"x") + u16(0)
    mac = session_hmac(TPM_ALG_SHA256, b"", cp_hash(TPM_ALG_SHA256, "NV_Write", [name, name], params),
                       b"\x01" * 16, nonce, CONTINUE)
    write = build_command(CC["NV_Write"], [POLICY_INDEX, POLICY_INDEX], params,
                          auth=auth_command(session, b"\x01" * 16, mac))
    assert client.rc(write) == RC_POLICY_CC_S1
    assert response_code(nv_read_with(client, session, nonce, name)) == 0


def test_admin_role_needs_policy_command_code(client: Client) -> None:
    """NV_ChangeAuth (ADMIN role) through a policy without PolicyCommandCode fails even if the digest matches."""
    auth_only = step(TPM_ALG_SHA256, zeros(), "PolicyAuthValue")
    name = define_policy_index(client, auth_only)
    new_auth = tpm2b(b"new")

    def change_auth(session: int, nonce: bytes) -> int:
        mac = session_hmac(TPM_ALG_SHA256, SECRET, cp_hash(TPM_ALG_SHA256, "NV_ChangeAuth", [name], new_auth),
                           b"\x02" * 16, nonce, CONTINUE)
        return client.rc(build_command(CC["NV_ChangeAuth"], [POLICY_INDEX], new_auth,
                                       auth=auth_command(session, b"\x02" * 16, mac)))

    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_simple("PolicyAuthValue", session))
    assert change_auth(session, nonce) == RC_POLICY_FAIL_S1
    assert response_code(nv_read_with(client, session, nonce, name, auth_value=SECRET)) == 0  # same digest: fine

    admin = step(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_ChangeAuth"])),
                 "PolicyAuthValue")
    name = define_policy_index(client, admin, index=POLICY_INDEX + 1)
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_command_code(session, CC["NV_ChangeAuth"]))
    client.ok(policy_simple("PolicyAuthValue", session))
    mac = session_hmac(TPM_ALG_SHA256, SECRET, cp_hash(TPM_ALG_SHA256, "NV_ChangeAuth", [name], new_auth),
                       b"\x02" * 16, nonce, CONTINUE)
    assert client.rc(build_command(CC["NV_ChangeAuth"], [POLICY_INDEX + 1], new_auth,
                                   auth=auth_command(session, b"\x02" * 16, mac))) == 0


def test_policy_pcr_binds_pcr_values_until_they_change(client: Client) -> None:
    selection = [(TPM_ALG_SHA256, [7])]
    pcr7 = extended(TPM_ALG_SHA256, bytes(32), b"\x11" * 32)
    client.ok(pcr_extend(7, [(TPM_ALG_SHA256, b"\x11" * 32)]))
    policy = step(TPM_ALG_SHA256, zeros(), "PolicyPCR", tpml_pcr_selection(selection),
                  pcr_values_digest(TPM_ALG_SHA256, [pcr7]))
    name = define_policy_index(client, policy)

    trial, _ = client.start(TPM_SE_TRIAL)
    client.ok(policy_pcr(trial, b"", selection))
    assert client.digest(trial) == policy
    # a trial session computes the digest but never authorizes
    assert response_code(nv_read_with(client, trial, b"", name)) == RC_ATTRIBUTES_S1

    session, nonce = client.start(TPM_SE_POLICY)
    assert client.rc(policy_pcr(session, H(TPM_ALG_SHA256, b"not the values"), selection)) == RC_VALUE_P1
    client.ok(policy_pcr(session, pcr_values_digest(TPM_ALG_SHA256, [pcr7]), selection))
    assert response_code(nv_read_with(client, session, nonce, name)) == 0

    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_pcr(session, b"", selection))
    client.ok(pcr_extend(7, [(TPM_ALG_SHA256, b"\x22" * 32)]))  # after PolicyPCR: the session is stale
    assert response_code(nv_read_with(client, session, nonce, name)) == RC_PCR_CHANGED
    assert client.rc(policy_pcr(session, b"", selection)) == RC_PCR_CHANGED
    # a fresh session sees the new value, which no longer matches the index's policy
    client.flush_sessions()
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_pcr(session, b"", selection))
    assert response_code(nv_read_with(client, session, nonce, name)) == RC_POLICY_FAIL_S1


def test_policy_or_and_locality(client: Client) -> None:
    branch_a = step(TPM_ALG_SHA256, zeros(), "PolicyLocality", u8(0x08))  # locality 3 only
    branch_b = step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_ReadPublic"]))
    policy = step(TPM_ALG_SHA256, zeros(), "PolicyOR", branch_a, branch_b)
    name = define_policy_index(client, policy)
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_locality(session, 0x08))
    assert client.rc(policy_or(session, [branch_b, H(TPM_ALG_SHA256, b"x")])) == RC_VALUE_P1
    client.ok(policy_or(session, [branch_a, branch_b]))
    assert client.digest(session) == policy
    assert response_code(nv_read_with(client, session, nonce, name)) == RC_LOCALITY
    assert response_code(nv_read_with(client, session, nonce, name, locality=3)) == 0


PCR_GROUP = 20  # PCRs 20-22 share one authPolicy (PCR_SetAuthPolicy); a PCR's name is its handle


def _extend_group_pcr(client: Client, session: int, nonce: bytes, pcr: int, value: bytes) -> bytes:
    """PCR_Extend of a DRTM PCR from locality 2, authorized by a policy session without authValue."""
    params = u32(1) + u16(TPM_ALG_SHA256) + value
    mac = session_hmac(TPM_ALG_SHA256, b"", cp_hash(TPM_ALG_SHA256, "PCR_Extend", [u32(pcr)], params),
                       b"\x05" * 16, nonce, CONTINUE)
    return client.send(build_command(CC["PCR_Extend"], [pcr], params, auth=auth_command(session, b"\x05" * 16, mac)),
                       locality=2)


def _set_group_policy(client: Client, policy: bytes) -> None:
    client.ok(build_command(CC["PCR_SetAuthPolicy"], [TPM_RH_PLATFORM],
                            tpm2b(policy) + u16(TPM_ALG_SHA256) + u32(PCR_GROUP), auth=pw_session()))


def test_policy_cp_hash_and_name_hash_are_enforced(client: Client) -> None:
    value = b"\x33" * 32
    wanted = cp_hash(TPM_ALG_SHA256, "PCR_Extend", [u32(PCR_GROUP)], u32(1) + u16(TPM_ALG_SHA256) + value)
    _set_group_policy(client, step(TPM_ALG_SHA256, zeros(), "PolicyCpHash", wanted))
    session, nonce = client.start(TPM_SE_POLICY)
    assert client.rc(policy_digest_param("PolicyCpHash", session, wanted[:-1])) == RC_SIZE_P1
    client.ok(policy_digest_param("PolicyCpHash", session, wanted))
    client.ok(policy_simple("PolicyRestart", session))
    client.ok(policy_digest_param("PolicyCpHash", session, wanted))
    assert client.rc(policy_digest_param("PolicyCpHash", session, H(TPM_ALG_SHA256, b"other"))) == RC_CPHASH
    assert client.rc(policy_digest_param("PolicyNameHash", session, H(TPM_ALG_SHA256, b"n"))) == RC_CPHASH
    assert response_code(_extend_group_pcr(client, session, nonce, PCR_GROUP, b"\x44" * 32)) == RC_POLICY_FAIL_S1
    assert response_code(_extend_group_pcr(client, session, nonce, PCR_GROUP, value)) == 0

    names = H(TPM_ALG_SHA256, u32(PCR_GROUP))  # nameHash = H(names of every handle of the command)
    _set_group_policy(client, step(TPM_ALG_SHA256, zeros(), "PolicyNameHash", names))
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_digest_param("PolicyNameHash", session, names))
    assert response_code(_extend_group_pcr(client, session, nonce, PCR_GROUP + 1, value)) == RC_POLICY_FAIL_S1
    assert response_code(_extend_group_pcr(client, session, nonce, PCR_GROUP, b"\x55" * 32)) == 0


def test_policy_nv_written_allows_a_single_write(client: Client) -> None:
    index = 0x01500020
    attributes = TPMA_NV_POLICYWRITE | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA
    policy = step(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicyNvWritten", u8(0)),
                  "PolicyCommandCode", u32(CC["NV_Write"]))
    client.define(index, attributes, 4, policy=policy)

    def write(session: int, nonce: bytes, written: bool) -> int:
        name = nv_name(index, attributes, 4, policy, written=written)
        params = tpm2b(b"once") + u16(0)
        mac = session_hmac(TPM_ALG_SHA256, b"", cp_hash(TPM_ALG_SHA256, "NV_Write", [name, name], params),
                           b"\x03" * 16, nonce, CONTINUE)
        return client.rc(build_command(CC["NV_Write"], [index, index], params,
                                       auth=auth_command(session, b"\x03" * 16, mac)))

    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_nv_written(session, 0))
    assert client.rc(policy_nv_written(session, 1)) == RC_VALUE_P1
    client.ok(policy_command_code(session, CC["NV_Write"]))
    assert write(session, nonce, written=False) == 0
    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_nv_written(session, 0))
    client.ok(policy_command_code(session, CC["NV_Write"]))
    assert write(session, nonce, written=True) == RC_POLICY_FAIL_S1


def test_policy_nv_and_counter_timer_conditions(client: Client, clock: FakeClock) -> None:
    source = 0x01500030
    attrs = TPMA_NV_OWNERREAD | TPMA_NV_OWNERWRITE | TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE | TPMA_NV_NO_DA
    client.define(source, attrs, 8)
    session, _ = client.start(TPM_SE_POLICY)
    assert client.rc(policy_nv(source, source, session, u64(3), 0, EO_UNSIGNED_GT)) == RC_NV_UNINITIALIZED
    client.ok(nv_write(source, u64(5)))
    source_name = nv_name(source, attrs, 8, written=True)
    assert client.rc(policy_nv(source, source, session, u64(9), 0, EO_UNSIGNED_GT)) == RC_POLICY
    assert client.rc(policy_nv(source, source, session, u64(3), 9, EO_UNSIGNED_GT)) == RC_VALUE_P2
    assert client.rc(policy_nv(source, source, session, u64(3), 4, EO_UNSIGNED_GT)) == RC_SIZE_P1
    assert client.rc(policy_nv(source, source, session, u64(3), 0, 0x0C)) == 0x3C4  # unknown TPM_EO: VALUE P3
    client.ok(policy_nv(TPM_RH_OWNER, source, session, u64(3), 0, EO_UNSIGNED_GT))
    client.ok(policy_nv(source, source, session, b"\x05", 7, EO_EQ))
    expected = step(TPM_ALG_SHA256, zeros(), "PolicyNV", H(TPM_ALG_SHA256, u64(3), u16(0), u16(EO_UNSIGNED_GT)),
                    source_name)
    expected = step(TPM_ALG_SHA256, expected, "PolicyNV", H(TPM_ALG_SHA256, b"\x05", u16(7), u16(EO_EQ)),
                    source_name)
    assert client.digest(session) == expected

    clock.ms += 7000  # TPMS_TIME_INFO: time(8) clock(8) resetCount(4) restartCount(4) safe(1)
    assert client.rc(policy_counter_timer(session, u64(7000), 0, EO_UNSIGNED_GE)) == 0
    assert client.rc(policy_counter_timer(session, u64(7001), 0, EO_UNSIGNED_GE)) == RC_POLICY
    assert client.rc(policy_counter_timer(session, u32(1), 16, EO_EQ)) == 0  # one TPM Reset so far
    assert client.rc(policy_counter_timer(session, b"\x01", 26, EO_EQ)) == RC_VALUE_P2
    assert client.rc(policy_counter_timer(session, u64(0), 20, EO_EQ)) == RC_RANGE
    trial, _ = client.start(TPM_SE_TRIAL)
    client.ok(policy_counter_timer(trial, u64(10**12), 0, EO_UNSIGNED_GE))  # a trial does not compare
    assert client.rc(policy_counter_timer(trial, u64(0), 20, EO_EQ)) == RC_RANGE  # but checks bounds


def test_policy_secret(client: Client, clock: FakeClock) -> None:
    policy = H(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicySecret", u32(TPM_RH_OWNER)), b"")
    name = define_policy_index(client, policy)
    clock.ms += 3000
    session, nonce = client.start(TPM_SE_POLICY)  # starts at TPM time 3000 ms
    assert client.rc(policy_secret(TPM_RH_OWNER, session, nonce_tpm=b"\x00" * 32)) == RC_NONCE_P1
    assert client.rc(policy_secret(TPM_RH_OWNER, session, password=b"not the owner")) == RC_BAD_AUTH_S1
    assert client.rc(policy_secret(TPM_RH_OWNER, session, cp_hash=b"short")) == 0x2D5  # SIZE P2
    response = client.ok(policy_secret(TPM_RH_OWNER, session, nonce_tpm=nonce, expiration=5))
    params = split_response(response)[0]
    assert params == tpm2b(b"") + u16(TPM_ST_AUTH_SECRET) + u32(0x40000007) + tpm2b(b"")  # NULL ticket
    assert client.digest(session) == policy
    clock.ms += 6000  # the assertion lapses 5 s after the session started
    assert response_code(nv_read_with(client, session, nonce, name)) == RC_EXPIRED_S1

    session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_secret(TPM_RH_OWNER, session, nonce_tpm=nonce, expiration=100))
    assert response_code(nv_read_with(client, session, nonce, name)) == 0

    # a negative expiration returns a ticket: HMAC under the owner proof, timeout from the session start
    start = clock.ms - 1_000_000
    session, nonce = client.start(TPM_SE_POLICY)
    params = split_response(client.ok(policy_secret(TPM_RH_OWNER, session, nonce_tpm=nonce, policy_ref=b"r",
                                                    expiration=-10)))[0]
    timeout = start + 10_000
    assert params[:10] == tpm2b(u64(timeout))
    assert params[10:16] == u16(TPM_ST_AUTH_SECRET) + u32(TPM_RH_OWNER)
    engine = client.tpm
    mac = hmac.new(engine.state.sh_proof, u16(TPM_ST_AUTH_SECRET) + b"" + b"r" + u32(TPM_RH_OWNER) + u64(timeout)
                   + engine.volatile.null_proof, "sha256").digest()
    assert params[16:] == tpm2b(mac)
    # without nonceTPM the expiration is absolute TPM time and the ticket expires on TPM Reset
    params = split_response(client.ok(policy_secret(TPM_RH_OWNER, session, expiration=-20)))[0]
    assert int.from_bytes(params[2:10], "big") == (1 << 63) | (20_000 + start % 1000)
    assert client.rc(policy_secret(TPM_RH_OWNER, session, expiration=1)) == RC_EXPIRED_P4  # 1 s has passed


def test_policy_secret_needs_an_auth_value_in_its_own_policy_session(client: Client) -> None:
    gate = step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["PolicySecret"]))
    name = define_policy_index(client, gate)
    target, _ = client.start(TPM_SE_POLICY)
    auth_session, nonce = client.start(TPM_SE_POLICY)
    client.ok(policy_command_code(auth_session, CC["PolicySecret"]))
    params = tpm2b(b"") + tpm2b(b"") + tpm2b(b"") + struct.pack(">i", 0)
    mac = session_hmac(TPM_ALG_SHA256, b"", cp_hash(TPM_ALG_SHA256, "PolicySecret", [name, u32(target)], params),
                       b"\x04" * 16, nonce, CONTINUE)
    command = build_command(CC["PolicySecret"], [POLICY_INDEX, target], params,
                            auth=auth_command(auth_session, b"\x04" * 16, mac))
    assert client.rc(command) == RC_MODE_S1


def test_bad_inputs(client: Client) -> None:
    session, _ = client.start(TPM_SE_POLICY)
    hmac_session, _ = client.start(TPM_SE_HMAC)
    d = H(TPM_ALG_SHA256, b"d")
    assert client.rc(policy_or(session, [d])) == RC_SIZE_P1
    assert client.rc(policy_or(session, [d] * 9)) == RC_SIZE_P1
    assert client.rc(policy_locality(session, 0)) == RC_RANGE_P1
    client.ok(policy_locality(session, 0x01))
    assert client.rc(policy_locality(session, 0x02)) == RC_RANGE_P1  # nothing left
    assert client.rc(policy_locality(session, 0x40)) == RC_RANGE_P1  # extended after normal
    assert client.rc(policy_simple("PolicyAuthValue", hmac_session)) == RC_VALUE_H1
    assert client.rc(policy_simple("PolicyGetDigest", TPM_RH_OWNER)) == RC_VALUE_H1
    assert client.rc(policy_simple("PolicyAuthValue", 0x03000030)) == RC_REFERENCE_H0
    assert client.rc(policy_secret(TPM_RH_OWNER, 0x03000030)) == RC_REFERENCE_H0 + 1
    assert client.rc(policy_secret(TPM_RH_OWNER, hmac_session)) == 0x284  # VALUE, handle 2
    assert client.rc(policy_command_code(session, 0x0000FFFF)) == RC_POLICY_CC_P1
    client.ok(policy_command_code(session, CC["NV_Read"]))
    assert client.rc(policy_command_code(session, CC["NV_Write"])) == RC_VALUE_P1
    assert client.rc(policy_duplication_select(session, b"", b"", 1)) == RC_COMMAND_CODE
    assert client.rc(policy_duplication_select(session, b"", b"", 2)) == 0x3C4  # includeObject: VALUE P3
    assert client.rc(policy_nv_written(session, 2)) == RC_VALUE_P1
    assert client.rc(policy_digest_param("PolicyNameHash", session, b"\x00" * 20)) == RC_SIZE_P1
    client.ok(policy_digest_param("PolicyNameHash", session, d))
    assert client.rc(policy_digest_param("PolicyCpHash", session, d)) == RC_CPHASH
    assert client.rc(policy_duplication_select(session, b"", b"", 0)) == RC_CPHASH
    # wrong algorithm session for the index's policy: the digest may not even have the same size
    sha1, _ = client.start(TPM_SE_TRIAL, TPM_ALG_SHA1)
    assert len(client.digest(sha1)) == 20


def test_policy_pcr_ignores_banks_that_are_not_allocated(client: Client) -> None:
    """The selection is recorded with unallocated banks cleared, and they add no values."""
    client.ok(build_command(CC["PCR_Allocate"], [TPM_RH_PLATFORM], tpml_pcr_selection([(TPM_ALG_SHA384, [])]),
                            auth=pw_session()))
    client.tpm.power_cycle()
    client.ok(build_command(CC["Startup"], params=u16(0)))
    trial, _ = client.start(TPM_SE_TRIAL)
    client.ok(policy_pcr(trial, b"", [(TPM_ALG_SHA384, [0, 1]), (TPM_ALG_SHA256, [2])]))
    recorded = tpml_pcr_selection([(TPM_ALG_SHA384, []), (TPM_ALG_SHA256, [2])])
    assert client.digest(trial) == step(TPM_ALG_SHA256, zeros(), "PolicyPCR", recorded,
                                        pcr_values_digest(TPM_ALG_SHA256, [bytes(32)]))
