"""Policy sessions against swtpm and through tpm2-tools.

The same policy commands go to swtpm and to our vTPM, each in its own sessions:
response codes must match and PolicyGetDigest answers must be identical, byte for
byte, for every policy command in trial sessions of three digest algorithms, for
the refusals, for the checks of a real policy session and for an NV index read
under its policy. tpm2-tools then build policies (PCR, command code, auth value,
password, OR, secret) that unlock NV indices of a served vTPM; every digest they
write is the one the spec formulas give.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from support.differential import Difference, Differential
from support.policy_terms import *  # noqa: F403 - the policy tests' shared vocabulary
from support.servers import start_vtpm
from support.tools import needs_tools, tools


# ----------------------------------------------------------------------------- against swtpm

class PolicyPair:
    """Runs each step on both servers, each with its own session handles and nonces.

    A step is a function from the server's session table to the command bytes. Only
    response codes are compared, except PolicyGetDigest answers, compared byte for byte.
    """

    def __init__(self, diff: Differential) -> None:
        self.diff = diff
        self.servers = {"ours": diff.ours, "ref": diff.ref}
        self.sessions: dict[str, dict[str, tuple[int, bytes]]] = {"ours": {}, "ref": {}}

    def run(self, name: str, build: Callable[[dict[str, tuple[int, bytes]]], bytes],
            ref_rc: int | None = None, mode: str = "rc") -> dict[str, bytes | str]:
        self.diff.steps += 1
        out: dict[str, bytes | str] = {}
        for key, server in self.servers.items():
            out[key] = self.diff._send(server, name, build(self.sessions[key]), 10.0)
        ours, ref = out["ours"], out["ref"]
        if mode == "bytes":
            same = ours == ref
        else:
            same = isinstance(ours, bytes) and isinstance(ref, bytes) and response_code(ours) == response_code(ref)
        if not same:
            self.diff.differences.append(Difference(name, build(self.sessions["ours"]), ours, ref, mode))
        if ref_rc is not None and (not isinstance(ref, bytes) or response_code(ref) != ref_rc):
            self.diff.reference_surprises.append(f"[{name}] swtpm answered {ref!r}, the step expects 0x{ref_rc:03x}")
        return out

    def start(self, label: str, kind: int, alg: int = TPM_ALG_SHA256) -> None:
        out = self.run(f"StartAuthSession {label}", lambda s: start_auth_session(kind, alg), ref_rc=0)
        for key, response in out.items():
            assert isinstance(response, bytes) and response_code(response) == 0, (key, response)
            self.sessions[key][label] = session_from_response(response)

    def digest(self, label: str, after: str) -> None:
        """PolicyGetDigest on both: identical responses, byte for byte."""
        self.run(f"PolicyGetDigest {label} after {after}", lambda s: policy_simple("PolicyGetDigest", s[label][0]),
                 ref_rc=0, mode="bytes")


def _policy_read(s: dict[str, tuple[int, bytes]], label: str, index: int, name: bytes, auth_value: bytes) -> bytes:
    handle, nonce = s[label]
    params = u16(len(DATA)) + u16(0)
    mac = session_hmac(TPM_ALG_SHA256, auth_value, cp_hash(TPM_ALG_SHA256, "NV_Read", [name, name], params),
                       b"\x06" * 16, nonce, CONTINUE)
    return build_command(CC["NV_Read"], [index, index], params, auth=auth_command(handle, b"\x06" * 16, mac))


Step = Callable[[dict[str, tuple[int, bytes]]], bytes]


def _trial_steps(t: str, alg: int, source: int) -> list[tuple[str, Step]]:
    """Every policy command once, on the trial session labelled ``t`` (digest algorithm ``alg``)."""
    return [
        ("PolicyPCR sha256 0,7,17 + sha1 7 (current values)",
         lambda s: policy_pcr(s[t][0], b"", [(TPM_ALG_SHA256, [0, 7, 17]), (TPM_ALG_SHA1, [7])])),
        ("PolicyPCR with a given pcrDigest", lambda s: policy_pcr(s[t][0], b"\xab" * 32, [(TPM_ALG_SHA256, [1])])),
        ("PolicyCommandCode NV_Read", lambda s: policy_command_code(s[t][0], CC["NV_Read"])),
        ("PolicyAuthValue", lambda s: policy_simple("PolicyAuthValue", s[t][0])),
        ("PolicyPassword", lambda s: policy_simple("PolicyPassword", s[t][0])),
        ("PolicyLocality 0x06", lambda s: policy_locality(s[t][0], 0x06)),
        ("PolicyLocality 0x03", lambda s: policy_locality(s[t][0], 0x03)),
        ("PolicyNvWritten yes", lambda s: policy_nv_written(s[t][0], 1)),
        ("PolicyCounterTimer time > 5", lambda s: policy_counter_timer(s[t][0], u64(5), 0, EO_UNSIGNED_GT)),
        ("PolicyNV source == 5 (owner)", lambda s: policy_nv(TPM_RH_OWNER, source, s[t][0], u64(5), 0, EO_EQ)),
        ("PolicySecret owner, policyRef", lambda s: policy_secret(TPM_RH_OWNER, s[t][0], policy_ref=b"ref")),
        ("PolicyOR two branches", lambda s: policy_or(s[t][0], [b"\x01" * 32, b"\x02" * 48])),
        ("PolicyCpHash", lambda s: policy_digest_param("PolicyCpHash", s[t][0], b"\x0c" * SIZE[alg])),
        ("PolicyRestart", lambda s: policy_simple("PolicyRestart", s[t][0])),
        ("PolicyNameHash", lambda s: policy_digest_param("PolicyNameHash", s[t][0], b"\x0d" * SIZE[alg])),
        ("PolicyRestart", lambda s: policy_simple("PolicyRestart", s[t][0])),
        ("PolicyDuplicationSelect include",
         lambda s: policy_duplication_select(s[t][0], b"\x00\x0b" + b"\x01" * 32, b"\x00\x0b" + b"\x02" * 32, 1)),
    ]


def test_policy_digests_match_swtpm(tpms: Differential) -> None:
    pair = PolicyPair(tpms)
    source = 0x01500040
    attrs = TPMA_NV_OWNERREAD | TPMA_NV_OWNERWRITE | TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE | TPMA_NV_NO_DA
    tpms.check("NV_DefineSpace source index", nv_define_space(source, attrs, 8), ref_rc=0)
    tpms.check("NV_Write source index", nv_write(source, u64(5)), ref_rc=0)
    tpms.check("PCR_Extend PCR 7", pcr_extend(7, [(TPM_ALG_SHA256, b"\x07" * 32)]), ref_rc=0)

    for alg, label in ((TPM_ALG_SHA256, "trial"), (TPM_ALG_SHA1, "trial-sha1"), (TPM_ALG_SHA384, "trial-sha384")):
        pair.start(label, TPM_SE_TRIAL, alg)
        for name, build in _trial_steps(label, alg, source):
            pair.run(f"{name} ({label})", build, ref_rc=0)
            pair.digest(label, name)
        if label != "trial":  # swtpm holds three loaded sessions at most
            pair.run(f"FlushContext {label}", lambda s, label=label: flush_context(s[label][0]), ref_rc=0)

    t = "trial"
    refusals: list[tuple[str, Step, int]] = [
        ("PolicyCommandCode other than Duplicate", lambda s: policy_command_code(s[t][0], CC["NV_Read"]),
         RC_VALUE_P1),
        ("PolicyRestart", lambda s: policy_simple("PolicyRestart", s[t][0]), 0),
        ("PolicyOR one digest", lambda s: policy_or(s[t][0], [b"\x01" * 32]), RC_SIZE_P1),
        ("PolicyOR nine digests", lambda s: policy_or(s[t][0], [b"\x01" * 32] * 9), RC_SIZE_P1),
        ("PolicyLocality 0", lambda s: policy_locality(s[t][0], 0), RC_RANGE_P1),
        ("PolicyLocality 0x01", lambda s: policy_locality(s[t][0], 0x01), 0),
        ("PolicyLocality 0x02 (none left)", lambda s: policy_locality(s[t][0], 0x02), RC_RANGE_P1),
        ("PolicyLocality 0x40 (extended after normal)", lambda s: policy_locality(s[t][0], 0x40), RC_RANGE_P1),
        ("PolicyCommandCode unimplemented 0xFFFF", lambda s: policy_command_code(s[t][0], 0xFFFF), RC_POLICY_CC_P1),
        ("PolicyCommandCode NV_Read", lambda s: policy_command_code(s[t][0], CC["NV_Read"]), 0),
        ("PolicyCommandCode NV_Write (conflict)", lambda s: policy_command_code(s[t][0], CC["NV_Write"]),
         RC_VALUE_P1),
        ("PolicyNvWritten no", lambda s: policy_nv_written(s[t][0], 0), 0),
        ("PolicyNvWritten yes (conflict)", lambda s: policy_nv_written(s[t][0], 1), RC_VALUE_P1),
        ("PolicyCpHash 31 bytes", lambda s: policy_digest_param("PolicyCpHash", s[t][0], bytes(31)), RC_SIZE_P1),
        ("PolicyNameHash", lambda s: policy_digest_param("PolicyNameHash", s[t][0], b"\x0e" * 32), 0),
        ("PolicyCpHash after a name hash", lambda s: policy_digest_param("PolicyCpHash", s[t][0], bytes(32)),
         RC_CPHASH),
        ("PolicyCounterTimer offset 26", lambda s: policy_counter_timer(s[t][0], b"\x01", 26, EO_EQ), RC_VALUE_P2),
        ("PolicyCounterTimer past the end", lambda s: policy_counter_timer(s[t][0], u64(0), 20, EO_EQ), RC_RANGE),
        ("PolicyNV unknown operation", lambda s: policy_nv(source, source, s[t][0], b"\x01", 0, 0x0C), 0x3C4),
        ("PolicyNvWritten 2", lambda s: policy_nv_written(s[t][0], 2), RC_VALUE_P1),
        ("PolicyAuthValue on an unloaded policy session", lambda s: policy_simple("PolicyAuthValue", 0x03000030),
         RC_REFERENCE_H0),
        ("PolicyGetDigest on TPM_RH_OWNER", lambda s: policy_simple("PolicyGetDigest", TPM_RH_OWNER), RC_VALUE_H1),
    ]
    for name, build, expected in refusals:
        pair.run(name, build, ref_rc=expected)
        pair.digest(t, name)
    pair.run("FlushContext trial", lambda s: flush_context(s[t][0]), ref_rc=0)

    pair.start("hmac", TPM_SE_HMAC)
    pair.run("PolicyAuthValue on an HMAC session", lambda s: policy_simple("PolicyAuthValue", s["hmac"][0]),
             ref_rc=RC_VALUE_H1)
    pair.run("FlushContext hmac", lambda s: flush_context(s["hmac"][0]), ref_rc=0)

    # a real policy session: the checks that need state
    pair.start("real", TPM_SE_POLICY)
    r = "real"
    checks: list[tuple[str, Step, int]] = [
        ("PolicyPCR wrong pcrDigest", lambda s: policy_pcr(s[r][0], b"\xab" * 32, [(TPM_ALG_SHA256, [7])]),
         RC_VALUE_P1),
        ("PolicyPCR current values", lambda s: policy_pcr(s[r][0], b"", [(TPM_ALG_SHA256, [7])]), 0),
        ("PolicyOR without a matching branch", lambda s: policy_or(s[r][0], [b"\x01" * 32, b"\x02" * 32]),
         RC_VALUE_P1),
        ("PolicyNV source > 9 (false)", lambda s: policy_nv(source, source, s[r][0], u64(9), 0, EO_UNSIGNED_GT),
         RC_POLICY),
        ("PolicyNV offset 9", lambda s: policy_nv(source, source, s[r][0], b"\x01", 9, EO_EQ), RC_VALUE_P2),
        ("PolicyNV 8 bytes at 4", lambda s: policy_nv(source, source, s[r][0], u64(0), 4, EO_EQ), RC_SIZE_P1),
        ("PolicyNV source >= 5", lambda s: policy_nv(source, source, s[r][0], u64(5), 0, EO_UNSIGNED_GE), 0),
        ("PolicyCounterTimer time >= 0", lambda s: policy_counter_timer(s[r][0], u64(0), 0, EO_UNSIGNED_GE), 0),
        ("PolicySecret wrong nonceTPM", lambda s: policy_secret(TPM_RH_OWNER, s[r][0], nonce_tpm=b"\x00" * 32),
         RC_NONCE_P1),
        ("PolicySecret cpHash of 5 bytes", lambda s: policy_secret(TPM_RH_OWNER, s[r][0], cp_hash=b"short"), 0x2D5),
        ("PolicySecret with nonceTPM, expiration 60",
         lambda s: policy_secret(TPM_RH_OWNER, s[r][0], nonce_tpm=s[r][1], expiration=60), 0),
        ("PolicySecret with nonceTPM, expiration -60 (ticket)",
         lambda s: policy_secret(TPM_RH_OWNER, s[r][0], nonce_tpm=s[r][1], expiration=-60), 0),
        ("PolicyNvWritten no", lambda s: policy_nv_written(s[r][0], 0), 0),
        ("PolicyNvWritten yes (conflict)", lambda s: policy_nv_written(s[r][0], 1), RC_VALUE_P1),
        ("PolicyCommandCode NV_Read", lambda s: policy_command_code(s[r][0], CC["NV_Read"]), 0),
        ("PolicyDuplicationSelect after a command code",
         lambda s: policy_duplication_select(s[r][0], b"", b"", 0), RC_COMMAND_CODE),
        ("PCR_Extend PCR 7 after PolicyPCR", lambda s: pcr_extend(7, [(TPM_ALG_SHA256, b"\x08" * 32)]), 0),
        ("PolicyPCR after the PCR changed", lambda s: policy_pcr(s[r][0], b"", [(TPM_ALG_SHA256, [7])]),
         RC_PCR_CHANGED),
    ]
    for name, build, expected in checks:
        pair.run(name, build, ref_rc=expected)
        pair.digest(r, name)

    # authorization: an index readable with PolicyCommandCode(NV_Read) + PolicyAuthValue
    policy = step(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicyCommandCode", u32(CC["NV_Read"])),
                  "PolicyAuthValue")
    tpms.check("NV_DefineSpace policy index", nv_define_space(POLICY_INDEX, POLICY_ATTRS, len(DATA), auth=SECRET,
                                                              policy=policy), ref_rc=0)
    tpms.check("NV_Write policy index", nv_write(POLICY_INDEX, DATA, password=SECRET), ref_rc=0)
    name = nv_name(POLICY_INDEX, POLICY_ATTRS, len(DATA), policy, written=True)
    pair.start("read", TPM_SE_POLICY)
    pair.run("NV_Read without the policy", lambda s: _policy_read(s, "read", POLICY_INDEX, name, SECRET),
             ref_rc=RC_POLICY_FAIL_S1)
    pair.run("PolicyCommandCode NV_Read", lambda s: policy_command_code(s["read"][0], CC["NV_Read"]), ref_rc=0)
    pair.run("PolicyAuthValue", lambda s: policy_simple("PolicyAuthValue", s["read"][0]), ref_rc=0)
    pair.digest("read", "PolicyAuthValue")
    pair.run("NV_Read wrong auth value", lambda s: _policy_read(s, "read", POLICY_INDEX, name, b"wrong"),
             ref_rc=RC_BAD_AUTH_S1)
    pair.run("NV_Read with the policy", lambda s: _policy_read(s, "read", POLICY_INDEX, name, SECRET), ref_rc=0)
    pair.digest("read", "NV_Read")  # used up: zeros again
    pair.start("trial-auth", TPM_SE_TRIAL)
    pair.run("NV_Read with a trial session", lambda s: _policy_read(s, "trial-auth", POLICY_INDEX, name, SECRET),
             ref_rc=RC_ATTRIBUTES_S1)
    for label in ("real", "read", "trial-auth"):
        pair.run(f"FlushContext {label}", lambda s, label=label: flush_context(s[label][0]), ref_rc=0)
    tpms.assert_identical()


# ----------------------------------------------------------------------------- tpm2-tools end to end


@needs_tools("tpm2_policypcr")
def test_tools_policy_sessions_unlock_nv_indices(tmp_path: Path) -> None:
    files = {name: str(tmp_path / name) for name in (
        "trial.ctx", "session.ctx", "pcr.policy", "policy.digest", "password.policy", "or.policy", "got.digest",
        "data.bin", "out.bin")}
    (tmp_path / "data.bin").write_bytes(DATA)
    index, or_index = "0x1500030", "0x1500031"
    with start_vtpm(["--state", str(tmp_path / "state"), "--startup-clear"], tmp_path / "log") as tpm:
        def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return tools(tpm, *args, check=check)

        # the policy, computed in a trial session: PolicyPCR + PolicyCommandCode(NV_Read) + PolicyAuthValue
        run("tpm2_startauthsession", "-S", files["trial.ctx"])
        run("tpm2_policypcr", "-S", files["trial.ctx"], "-l", "sha256:0,1,2,3", "-L", files["pcr.policy"])
        run("tpm2_policycommandcode", "-S", files["trial.ctx"], "-L", files["policy.digest"], "TPM2_CC_NV_Read")
        run("tpm2_policyauthvalue", "-S", files["trial.ctx"], "-L", files["policy.digest"])
        run("tpm2_getpolicydigest", "-S", files["trial.ctx"], "-o", files["got.digest"])
        run("tpm2_flushcontext", files["trial.ctx"])
        pcr_policy = step(TPM_ALG_SHA256, zeros(), "PolicyPCR", tpml_pcr_selection([(TPM_ALG_SHA256, [0, 1, 2, 3])]),
                          H(TPM_ALG_SHA256, bytes(32 * 4)))
        expected = step(TPM_ALG_SHA256, step(TPM_ALG_SHA256, pcr_policy, "PolicyCommandCode", u32(CC["NV_Read"])),
                        "PolicyAuthValue")
        assert Path(files["pcr.policy"]).read_bytes() == pcr_policy
        assert Path(files["policy.digest"]).read_bytes() == expected
        assert Path(files["got.digest"]).read_bytes() == expected

        run("tpm2_nvdefine", index, "-C", "o", "-s", str(len(DATA)), "-a", "ownerwrite|ownerread|policyread|no_da",
            "-L", files["policy.digest"], "-p", "secret")
        run("tpm2_nvwrite", index, "-C", "o", "-i", files["data.bin"])
        assert run("tpm2_nvread", index, "-s", str(len(DATA)), "-P", "secret", check=False).returncode != 0

        def read_with_policy(password: str) -> subprocess.CompletedProcess[str]:
            run("tpm2_startauthsession", "--policy-session", "-S", files["session.ctx"])
            run("tpm2_policypcr", "-S", files["session.ctx"], "-l", "sha256:0,1,2,3")
            run("tpm2_policycommandcode", "-S", files["session.ctx"], "TPM2_CC_NV_Read")
            run("tpm2_policyauthvalue", "-S", files["session.ctx"])
            result = run("tpm2_nvread", index, "-s", str(len(DATA)), "-o", files["out.bin"],
                         "-P", f"session:{files['session.ctx']}+{password}", check=False)
            run("tpm2_flushcontext", files["session.ctx"])
            return result

        assert read_with_policy("secret").returncode == 0
        assert Path(files["out.bin"]).read_bytes() == DATA
        wrong = read_with_policy("wrong")
        assert wrong.returncode != 0 and "0x9a2" in wrong.stderr.lower()  # TPM_RC_BAD_AUTH, session 1
        run("tpm2_pcrextend", f"2:sha256={'ab' * 32}")
        changed = read_with_policy("secret")
        assert changed.returncode != 0 and "0x99d" in changed.stderr.lower()  # TPM_RC_POLICY_FAIL, session 1

        # PolicyPassword, one branch of a PolicyOR; the other branch is the PCR policy above
        run("tpm2_startauthsession", "-S", files["trial.ctx"])
        run("tpm2_policypassword", "-S", files["trial.ctx"], "-L", files["password.policy"])
        run("tpm2_flushcontext", files["trial.ctx"])
        password_policy = step(TPM_ALG_SHA256, zeros(), "PolicyAuthValue")
        assert Path(files["password.policy"]).read_bytes() == password_policy
        run("tpm2_startauthsession", "-S", files["trial.ctx"])
        run("tpm2_policyor", "-S", files["trial.ctx"], "-L", files["or.policy"],
            "-l", f"sha256:{files['password.policy']},{files['policy.digest']}")
        run("tpm2_flushcontext", files["trial.ctx"])
        or_policy = step(TPM_ALG_SHA256, zeros(), "PolicyOR", password_policy, expected)
        assert Path(files["or.policy"]).read_bytes() == or_policy

        run("tpm2_nvdefine", or_index, "-C", "o", "-s", str(len(DATA)), "-a", "ownerwrite|ownerread|policyread",
            "-L", files["or.policy"], "-p", "pw2")
        run("tpm2_nvwrite", or_index, "-C", "o", "-i", files["data.bin"])
        run("tpm2_startauthsession", "--policy-session", "-S", files["session.ctx"])
        run("tpm2_policypassword", "-S", files["session.ctx"])
        run("tpm2_policyor", "-S", files["session.ctx"],
            "-l", f"sha256:{files['password.policy']},{files['policy.digest']}")
        run("tpm2_getpolicydigest", "-S", files["session.ctx"], "-o", files["got.digest"])
        assert Path(files["got.digest"]).read_bytes() == or_policy
        run("tpm2_nvread", or_index, "-s", str(len(DATA)), "-o", files["out.bin"],
            "-P", f"session:{files['session.ctx']}+pw2")
        run("tpm2_flushcontext", files["session.ctx"])
        assert Path(files["out.bin"]).read_bytes() == DATA

        # PolicySecret with the owner's auth value (set here), proven by the tool's own session
        secret_index = "0x1500032"
        run("tpm2_changeauth", "-c", "o", "ownerpw")
        run("tpm2_startauthsession", "-S", files["trial.ctx"])
        run("tpm2_policysecret", "-S", files["trial.ctx"], "-c", "o", "-L", files["password.policy"], "ownerpw")
        run("tpm2_flushcontext", files["trial.ctx"])
        secret_policy = H(TPM_ALG_SHA256, step(TPM_ALG_SHA256, zeros(), "PolicySecret", u32(TPM_RH_OWNER)), b"")
        assert Path(files["password.policy"]).read_bytes() == secret_policy
        run("tpm2_nvdefine", secret_index, "-C", "o", "-P", "ownerpw", "-s", str(len(DATA)),
            "-a", "ownerwrite|ownerread|policyread", "-L", files["password.policy"])
        run("tpm2_nvwrite", secret_index, "-C", "o", "-P", "ownerpw", "-i", files["data.bin"])
        run("tpm2_startauthsession", "--policy-session", "-S", files["session.ctx"])
        refused = run("tpm2_policysecret", "-S", files["session.ctx"], "-c", "o", "not-the-owner", check=False)
        assert refused.returncode != 0
        run("tpm2_policysecret", "-S", files["session.ctx"], "-c", "o", "-x", "-t", "60", "ownerpw")
        run("tpm2_nvread", secret_index, "-s", str(len(DATA)), "-o", files["out.bin"],
            "-P", f"session:{files['session.ctx']}")
        run("tpm2_flushcontext", files["session.ctx"])
        assert Path(files["out.bin"]).read_bytes() == DATA
