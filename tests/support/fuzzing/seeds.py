"""A prepared TPM and one valid-looking seed per implemented command.

``build_snapshot`` manufactures what survives a restart, through ordinary
commands: an ECC storage primary and children made persistent (ECDSA signer,
RSA key, AES key, HMAC key, sealed data), one free persistent slot, NV indices
of every kind (ordinary, counter, bits, extend, a global-lock one, a
policy-protected one, a platform one deletable by policy), and the blobs and
tickets the other commands take (a duplicable child's private area and
creation ticket, a saved context, a credential, a duplicate, a hashcheck
ticket, signatures for PolicySigned and PolicyAuthorize, a verified ticket,
an RSA ciphertext). ``prepare_episode`` adds what a power cycle loses: the
child loaded, a hash, HMAC or event sequence, an HMAC session and a policy
(or trial) session, leaving one object and one session slot free.

Each seed is a ``frames.Frame`` for one command code (``SEEDS``): header,
handles that exist in the prepared TPM (the role they play chosen at random
among plausible ones), a password or HMAC authorization per handle that
needs one, and parameters laid out with the marshal types' layout. Every
command in ``vtpm.core.COMMANDS`` has a seed (``missing_seeds`` says which
do not).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from vtpm import wire
from vtpm.constants import ALG, CC, ECC_CURVE, NT, RH, ST, TPMA_NV, TPMA_OBJECT, TPMA_SESSION
from vtpm.core import COMMANDS
from vtpm.marshal.objects import TPMT_PUBLIC

from support.fuzzing.frames import AuthEntry, Frame, Writer, writer

Transact = Callable[[bytes], bytes]
A = TPMA_OBJECT
HASH_ALGS = (ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512)
DIGEST = {ALG.SHA1: 20, ALG.SHA256: 32, ALG.SHA384: 48, ALG.SHA512: 64}
CONTINUE = TPMA_SESSION.CONTINUE_SESSION

PRIMARY, SIGNER, RSA_KEY, AES_KEY, HMAC_KEY, SEALED = (0x81000001, 0x81000002, 0x81000003, 0x81000004, 0x81000005,
                                                       0x81000006)
FREE_PERSISTENT = 0x81000007
PERSISTENT = (PRIMARY, SIGNER, RSA_KEY, AES_KEY, HMAC_KEY, SEALED)
NV_ORDINARY, NV_COUNTER, NV_BITS, NV_EXTEND, NV_GLOBAL, NV_POLICY = range(0x01000001, 0x01000007)
NV_PLATFORM = 0x01400001
NV_INDICES = (NV_ORDINARY, NV_COUNTER, NV_BITS, NV_EXTEND, NV_GLOBAL, NV_POLICY, NV_PLATFORM)
NV_FREE = tuple(range(0x01000010, 0x01000018))
HIERARCHIES = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL)
AUTH_HIERARCHIES = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.LOCKOUT)
RSA_BITS = 2048
TICKET_EXPIRATION = -3600


class PrepareError(RuntimeError):
    """A preparation command failed: the seeds would not start from a prepared TPM."""


def _ok(transact: Transact, command: bytes, what: str) -> wire.Response:
    response = wire.parse_response(transact(command))
    if not response.ok:
        raise PrepareError(f"{what}: {wire.describe_rc(response.rc)}")
    return response


def _tpm2b(data: bytes, offset: int) -> tuple[bytes, int]:
    size = int.from_bytes(data[offset : offset + 2], "big")
    return data[offset + 2 : offset + 2 + size], offset + 2 + size


def policy_cc_digest(code: int, alg: int = ALG.SHA256) -> bytes:
    """The policy digest of a fresh session after PolicyCommandCode(code)."""
    h = hashlib.new({ALG.SHA1: "sha1", ALG.SHA256: "sha256", ALG.SHA384: "sha384", ALG.SHA512: "sha512"}[alg])
    h.update(bytes(DIGEST[alg]) + CC.PolicyCommandCode.to_bytes(4, "big") + int(code).to_bytes(4, "big"))
    return h.digest()


def policy_or_digest(branches: list[bytes]) -> bytes:
    """The SHA-256 policy digest after PolicyOR(branches), whichever branch the session took."""
    return hashlib.sha256(bytes(32) + CC.PolicyOR.to_bytes(4, "big") + b"".join(branches)).digest()


# NV_POLICY is read with PolicyCommandCode(NV_Read) and has its auth changed with PolicyCommandCode(NV_ChangeAuth),
# the two joined by PolicyOR
NV_POLICY_BRANCHES = [policy_cc_digest(CC.NV_Read), policy_cc_digest(CC.NV_ChangeAuth)]


# ----------------------------------------------------------------------------- structures with marks


def sym_def(w: Writer, alg: int = ALG.NULL, bits: int = 128, mode: int = ALG.CFB) -> Writer:
    w.u16(alg)
    if alg != ALG.NULL:
        w.u16(bits).u16(mode)
    return w


def sym_def_session(w: Writer, alg: int = ALG.NULL, bits: int = 128, mode: int = ALG.CFB) -> Writer:
    """TPMT_SYM_DEF of StartAuthSession: XOR carries a hash and no mode."""
    w.u16(alg)
    if alg != ALG.NULL:
        w.u16(bits)
        if alg != ALG.XOR:
            w.u16(mode)
    return w


def asym_scheme(w: Writer, scheme: int = ALG.NULL, hash_alg: int = ALG.SHA256) -> Writer:
    w.u16(scheme)
    if scheme == ALG.ECDAA:
        w.u16(hash_alg).u16(0)
    elif scheme not in (ALG.NULL, ALG.RSAES):
        w.u16(hash_alg)
    return w


def kdf_scheme(w: Writer, scheme: int = ALG.NULL, hash_alg: int = ALG.SHA256) -> Writer:
    w.u16(scheme)
    if scheme != ALG.NULL:
        w.u16(hash_alg)
    return w


def keyedhash_scheme(w: Writer, scheme: int = ALG.NULL, hash_alg: int = ALG.SHA256) -> Writer:
    w.u16(scheme)
    if scheme == ALG.HMAC:
        w.u16(hash_alg)
    elif scheme == ALG.XOR:
        w.u16(hash_alg).u16(ALG.KDF1_SP800_108)
    return w


def public_area(kind: int, attributes: int, *, name_alg: int = ALG.SHA256, policy: bytes = b"",
                sym: tuple[int, int, int] = (ALG.NULL, 0, 0), scheme: tuple[int, int] = (ALG.NULL, ALG.SHA256),
                curve: int = ECC_CURVE.NIST_P256, bits: int = RSA_BITS, exponent: int = 0,
                unique: bytes | tuple[bytes, bytes] = b"") -> Writer:
    """TPMT_PUBLIC with every field marked."""
    w = writer().u16(kind).u16(name_alg).u32(attributes).b(policy)
    if kind == ALG.RSA:
        sym_def(w, *sym)
        asym_scheme(w, *scheme)
        w.u16(bits).u32(exponent)
        w.b(unique if isinstance(unique, bytes) else b"")
    elif kind == ALG.ECC:
        sym_def(w, *sym)
        asym_scheme(w, *scheme)
        w.u16(curve)
        kdf_scheme(w)
        x, y = unique if isinstance(unique, tuple) else (b"", b"")
        w.b(x).b(y)
    elif kind == ALG.KEYEDHASH:
        keyedhash_scheme(w, *scheme)
        w.b(unique if isinstance(unique, bytes) else b"")
    else:  # SYMCIPHER (and anything else: the parameters of a symmetric key)
        sym_def(w, *sym)
        w.b(unique if isinstance(unique, bytes) else b"")
    return w


KEY = A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.NO_DA
STORAGE = KEY | A.RESTRICTED | A.DECRYPT
AES_128_CFB = (ALG.AES, 128, ALG.CFB)


def ecc_storage(unique: tuple[bytes, bytes] = (b"", b"")) -> Writer:
    return public_area(ALG.ECC, STORAGE, sym=AES_128_CFB, unique=unique)


def rsa_storage(unique: bytes = b"", bits: int = RSA_BITS) -> Writer:
    return public_area(ALG.RSA, STORAGE, sym=AES_128_CFB, unique=unique, bits=bits)


def ecc_signer() -> Writer:
    return public_area(ALG.ECC, KEY | A.SIGN_ENCRYPT, scheme=(ALG.ECDSA, ALG.SHA256))


def rsa_key(bits: int = RSA_BITS) -> Writer:
    return public_area(ALG.RSA, KEY | A.SIGN_ENCRYPT | A.DECRYPT, bits=bits)


def aes_key(bits: int = 128, mode: int = ALG.CFB) -> Writer:
    return public_area(ALG.SYMCIPHER, KEY | A.SIGN_ENCRYPT | A.DECRYPT, sym=(ALG.AES, bits, mode))


def hmac_key() -> Writer:
    return public_area(ALG.KEYEDHASH, KEY | A.SIGN_ENCRYPT, scheme=(ALG.HMAC, ALG.SHA256))


def sealed_data() -> Writer:
    return public_area(ALG.KEYEDHASH, A.FIXED_TPM | A.FIXED_PARENT | A.USER_WITH_AUTH | A.NO_DA)


def duplicable_child() -> Writer:
    """An ECC decryption key that may be duplicated with a PolicyCommandCode(Duplicate) session."""
    return public_area(ALG.ECC, A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.NO_DA | A.DECRYPT,
                       policy=policy_cc_digest(CC.Duplicate))


def sensitive_create(user_auth: bytes = b"", data: bytes = b"") -> Writer:
    return writer().b(user_auth).b(data)


def pcr_selection(w: Writer, banks: list[tuple[int, bytes]]) -> Writer:
    w.count(len(banks))
    for alg, bitmap in banks:
        w.u16(alg).u8(len(bitmap)).raw(bitmap)
    return w


def ticket(w: Writer, tag: int = ST.HASHCHECK, hierarchy: int = RH.NULL, digest: bytes = b"") -> Writer:
    return w.u16(tag).u32(hierarchy).b(digest)


def nv_public(index: int, attributes: int, size: int, name_alg: int = ALG.SHA256, policy: bytes = b"") -> Writer:
    return writer().u32(index).u16(name_alg).u32(attributes).b(policy).u16(size)


def _public_of(response_params: bytes, offset: int) -> tuple[bytes, int]:
    return _tpm2b(response_params, offset)


# ----------------------------------------------------------------------------- the prepared TPM


@dataclass
class Artifacts:
    """What survives a restart: persistent objects' names, blobs and tickets the seeds replay."""

    names: dict[int, bytes] = field(default_factory=dict)
    publics: dict[int, bytes] = field(default_factory=dict)  # TPMT_PUBLIC of each persistent object and the child
    child_private: bytes = b""
    child_public: bytes = b""
    child_name: bytes = b""
    creation_hash: bytes = b""
    creation_ticket: bytes = b""  # TPMT_TK_CREATION as bytes
    context_blob: bytes = b""  # TPMS_CONTEXT of the child
    credential_blob: bytes = b""
    credential_secret: bytes = b""
    duplicate: bytes = b""
    duplicate_seed: bytes = b""
    hashed: bytes = b""
    hash_ticket: bytes = b""  # TPMT_TK_HASHCHECK
    signed_digest: bytes = b""
    signature: bytes = b""  # TPMT_SIGNATURE (ECDSA) over signed_digest
    policy_signed_auth: bytes = b""  # TPMT_SIGNATURE over the aHash of an empty nonce and expiration 0
    ticket_auth: bytes = b""  # the same with expiration TICKET_EXPIRATION: PolicySigned then returns a ticket
    approved_policy: bytes = b""
    verified_ticket: bytes = b""  # TPMT_TK_VERIFIED for PolicyAuthorize
    rsa_ciphertext: bytes = b""
    signer_point: tuple[bytes, bytes] = (b"", b"")
    nv_names: dict[int, bytes] = field(default_factory=dict)
    rsa_primary_template: bytes = b""


def prep_create(transact: Transact, parent: int, template: Writer, data: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Create under parent: (outPrivate, outPublic, rest of the response parameters)."""
    params = writer().sized(sensitive_create(b"", data)).sized(template).b(b"").count(0)
    r = _ok(transact, Frame(CC.Create, [parent], [AuthEntry()], params).build()[0], "Create")
    body = r.parameters()
    private, offset = _tpm2b(body, 0)
    public, offset = _tpm2b(body, offset)
    return private, public, body[offset:]


def prep_load(transact: Transact, parent: int, private: bytes, public: bytes) -> int:
    params = writer().b(private).b(public)
    r = _ok(transact, Frame(CC.Load, [parent], [AuthEntry()], params).build()[0], "Load")
    return r.split(1)[0][0]


def prep_persist(transact: Transact, handle: int, persistent: int) -> None:
    _ok(transact, Frame(CC.EvictControl, [RH.OWNER, handle], [AuthEntry()], writer().u32(persistent)).build()[0],
        "EvictControl")
    _ok(transact, wire.flush_context(handle), "FlushContext")


def prep_read_public(transact: Transact, handle: int) -> tuple[bytes, bytes]:
    body = _ok(transact, Frame(CC.ReadPublic, [handle]).build()[0], "ReadPublic").parameters()
    public, offset = _tpm2b(body, 0)
    name, _ = _tpm2b(body, offset)
    return public, name


def prep_start_session(transact: Transact, session_type: int, sym: tuple[int, int, int] = (ALG.NULL, 0, 0),
                   nonce: bytes = bytes(range(16))) -> tuple[int, bytes]:
    params = writer().b(nonce).b(b"").u8(session_type)
    sym_def_session(params, *sym)
    params.u16(ALG.SHA256)
    r = _ok(transact, Frame(CC.StartAuthSession, [RH.NULL, RH.NULL], None, params).build()[0], "StartAuthSession")
    (handle,), body, _ = r.split(1)
    return handle, _tpm2b(body, 0)[0]


def prep_sign(transact: Transact, digest: bytes) -> bytes:
    params = writer().b(digest)
    asym_scheme(params, ALG.ECDSA, ALG.SHA256)
    ticket(params)
    return _ok(transact, Frame(CC.Sign, [SIGNER], [AuthEntry()], params).build()[0], "Sign").parameters()


def build_snapshot(transact: Transact, rsa_bits: int = RSA_BITS) -> Artifacts:
    """Manufacture the persistent part of the prepared TPM (after Startup) through ordinary commands.

    ``rsa_bits`` sizes the RSA key and the cached RSA primary (1024 makes a quick campaign start quickly).
    """
    art = Artifacts()
    # the storage primary, and the RSA primary whose key the state's primary cache keeps
    params = writer().sized(sensitive_create()).sized(ecc_storage()).b(b"").count(0)
    r = _ok(transact, Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0], "CreatePrimary(ECC)")
    prep_persist(transact, r.split(1)[0][0], PRIMARY)
    art.rsa_primary_template = rsa_storage(bits=rsa_bits).bytes()
    params = writer().sized(sensitive_create()).b(art.rsa_primary_template).b(b"").count(0)
    r = _ok(transact, Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0], "CreatePrimary(RSA)")
    _ok(transact, wire.flush_context(r.split(1)[0][0]), "FlushContext")
    for handle, template, data in ((SIGNER, ecc_signer(), b""), (RSA_KEY, rsa_key(rsa_bits), b""), (AES_KEY, aes_key(), b""),
                                   (HMAC_KEY, hmac_key(), b""), (SEALED, sealed_data(), b"fuzz sealed secret")):
        private, public, _ = prep_create(transact, PRIMARY, template, data)
        prep_persist(transact, prep_load(transact, PRIMARY, private, public), handle)
    for handle in (PRIMARY, *PERSISTENT):
        art.publics[handle], art.names[handle] = prep_read_public(transact, handle)
    signer = TPMT_PUBLIC.parse(art.publics[SIGNER])
    art.signer_point = (bytes(signer.unique.x), bytes(signer.unique.y))

    # the duplicable child: its blobs, creation ticket, a saved context, a duplicate of it
    art.child_private, art.child_public, rest = prep_create(transact, PRIMARY, duplicable_child())
    _, offset = _tpm2b(rest, 0)  # creationData
    art.creation_hash, offset = _tpm2b(rest, offset)
    art.creation_ticket = rest[offset:]
    child = prep_load(transact, PRIMARY, art.child_private, art.child_public)
    art.child_name = prep_read_public(transact, child)[1]
    art.context_blob = _ok(transact, Frame(CC.ContextSave, [child]).build()[0], "ContextSave").parameters()
    session, _ = prep_start_session(transact, 0x01)
    _ok(transact, Frame(CC.PolicyCommandCode, [session], None, writer().u32(CC.Duplicate)).build()[0],
        "PolicyCommandCode")
    params = writer().b(b"")
    sym_def(params)
    body = _ok(transact, Frame(CC.Duplicate, [child, PRIMARY], [AuthEntry(session, attributes=0)], params).build()[0],
               "Duplicate").parameters()
    _, offset = _tpm2b(body, 0)
    art.duplicate, offset = _tpm2b(body, offset)
    art.duplicate_seed, _ = _tpm2b(body, offset)
    _ok(transact, wire.flush_context(child), "FlushContext")

    # a credential for the signer, protected by the storage primary
    params = writer().b(bytes(range(32))).b(art.names[SIGNER])
    body = _ok(transact, Frame(CC.MakeCredential, [PRIMARY], None, params).build()[0], "MakeCredential").parameters()
    art.credential_blob, offset = _tpm2b(body, 0)
    art.credential_secret, _ = _tpm2b(body, offset)

    # tickets and signatures
    params = writer().b(b"fuzz hashcheck").u16(ALG.SHA256).u32(RH.OWNER)
    body = _ok(transact, Frame(CC.Hash, [], None, params).build()[0], "Hash").parameters()
    art.hashed, offset = _tpm2b(body, 0)
    art.hash_ticket = body[offset:]
    art.signed_digest = hashlib.sha256(b"fuzz signed digest").digest()
    art.signature = prep_sign(transact, art.signed_digest)
    art.policy_signed_auth = prep_sign(transact, hashlib.sha256(bytes(4)).digest())
    art.ticket_auth = prep_sign(transact, hashlib.sha256(TICKET_EXPIRATION.to_bytes(4, "big", signed=True)).digest())
    art.approved_policy = policy_cc_digest(CC.NV_Read)
    a_hash = hashlib.sha256(art.approved_policy).digest()
    approval = prep_sign(transact, a_hash)
    params = writer().b(a_hash).raw(approval)
    art.verified_ticket = _ok(transact, Frame(CC.VerifySignature, [SIGNER], None, params).build()[0],
                              "VerifySignature").parameters()
    params = writer().b(b"fuzz rsa message")
    asym_scheme(params, ALG.OAEP, ALG.SHA256)
    params.b(b"")
    art.rsa_ciphertext = _tpm2b(_ok(transact, Frame(CC.RSA_Encrypt, [RSA_KEY], None, params).build()[0],
                                    "RSA_Encrypt").parameters(), 0)[0]

    # NV indices of each kind
    owner = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA
    layouts = (
        (NV_ORDINARY, owner | TPMA_NV.WRITE_STCLEAR | TPMA_NV.READ_STCLEAR, 64, b"", RH.OWNER),
        (NV_COUNTER, owner | NT.COUNTER << 4, 8, b"", RH.OWNER),
        (NV_BITS, owner | NT.BITS << 4, 8, b"", RH.OWNER),
        (NV_EXTEND, owner | NT.EXTEND << 4, 32, b"", RH.OWNER),
        (NV_GLOBAL, owner | TPMA_NV.WRITEDEFINE | TPMA_NV.GLOBALLOCK, 16, b"", RH.OWNER),
        (NV_POLICY, TPMA_NV.POLICYWRITE | TPMA_NV.POLICYREAD | TPMA_NV.NO_DA, 32,
         policy_or_digest(NV_POLICY_BRANCHES), RH.OWNER),
        (NV_PLATFORM, TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE | TPMA_NV.PPWRITE | TPMA_NV.PPREAD
         | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA, 16, policy_cc_digest(CC.NV_UndefineSpaceSpecial),
         RH.PLATFORM),
    )
    for index, attributes, size, policy, auth in layouts:
        params = writer().b(b"").sized(nv_public(index, attributes, size, policy=policy))
        _ok(transact, Frame(CC.NV_DefineSpace, [auth], [AuthEntry()], params).build()[0], f"NV_DefineSpace {index:#x}")
    _ok(transact, wire.nv_write(NV_ORDINARY, bytes(range(64))), "NV_Write")
    _ok(transact, Frame(CC.NV_Increment, [NV_COUNTER, NV_COUNTER], [AuthEntry()]).build()[0], "NV_Increment")
    _ok(transact, Frame(CC.NV_SetBits, [NV_BITS, NV_BITS], [AuthEntry()], writer().u64(5)).build()[0], "NV_SetBits")
    _ok(transact, Frame(CC.NV_Extend, [NV_EXTEND, NV_EXTEND], [AuthEntry()], writer().b(b"x")).build()[0],
        "NV_Extend")
    _ok(transact, wire.nv_write(NV_PLATFORM, bytes(16)), "NV_Write(platform)")
    for index in NV_INDICES:
        art.nv_names[index] = wire.parse_nv_read_public(
            _ok(transact, wire.nv_read_public(index), "NV_ReadPublic").parameters()).name
    return art


@dataclass
class Episode:
    """The volatile part of the prepared TPM in this episode (None: not there)."""

    child: int | None = None
    sequence: int | None = None
    sequence_kind: str = "hash"
    hmac_session: int | None = None
    session_symmetric: int = ALG.NULL
    policy_session: int | None = None
    policy_nonce: bytes = b""
    trial: bool = False


def prepare_episode(transact: Transact, art: Artifacts, rng: random.Random, *, startup: bool = True) -> Episode:
    """Startup(CLEAR) (unless the TPM is started), then the child loaded, a sequence, an HMAC session and a
    policy (or trial) session."""
    ep = Episode()
    if startup:
        _ok(transact, wire.STARTUP_CLEAR, "Startup")
    ep.child = prep_load(transact, PRIMARY, art.child_private, art.child_public)
    ep.sequence_kind = rng.choice(("hash", "hmac", "event"))
    if ep.sequence_kind == "hmac":
        params = writer().b(b"").u16(ALG.SHA256)
        command = Frame(CC.HMAC_Start, [HMAC_KEY], [AuthEntry()], params).build()[0]
    else:
        params = writer().b(b"").u16(ALG.SHA256 if ep.sequence_kind == "hash" else ALG.NULL)
        command = Frame(CC.HashSequenceStart, [], None, params).build()[0]
    ep.sequence = _ok(transact, command, "sequence start").split(1)[0][0]
    sym = rng.choice(((ALG.NULL, 0, 0), AES_128_CFB, (ALG.XOR, ALG.SHA256, 0)))
    ep.session_symmetric = sym[0]
    ep.hmac_session, _ = prep_start_session(transact, 0x00, sym)
    ep.trial = rng.random() < 0.2
    ep.policy_session, ep.policy_nonce = prep_start_session(transact, 0x03 if ep.trial else 0x01)
    return ep


# ----------------------------------------------------------------------------- seeds


@dataclass
class SeedContext:
    art: Artifacts
    ep: Episode
    rng: random.Random
    transact: Transact | None = None  # for seeds that need a fresh answer first (a ticket of this power cycle)
    rsa_rate: float = 1.0  # how often, relative to the default, a template asks for a new RSA key

    def policy_prelude(self, code: int, session: int | None = None, branches: list[bytes] | None = None) -> list[bytes]:
        """PolicyRestart and PolicyCommandCode(code) on the policy session (what a DUP or ADMIN role needs), then
        PolicyOR(branches) if given."""
        session = session or self.ep.policy_session
        if session is None:
            return []
        prelude = [bytes(Frame(CC.PolicyRestart, [session]).build()[0]),
                   bytes(Frame(CC.PolicyCommandCode, [session], None, writer().u32(code)).build()[0])]
        if branches:
            w = writer().count(len(branches))
            for branch in branches:
                w.b(branch)
            prelude.append(bytes(Frame(CC.PolicyOR, [session], None, w).build()[0]))
        return prelude

    # --------------------------------------------------------------- handles in their roles

    def pick(self, *options: int | None) -> int:
        present = [o for o in options if o is not None]
        return self.rng.choice(present)

    def parent(self) -> int:
        return self.pick(PRIMARY, PRIMARY, PRIMARY, RSA_KEY, self.ep.child)

    def any_object(self) -> int:
        return self.pick(*PERSISTENT, self.ep.child, self.ep.sequence)

    def signer(self) -> int:
        return self.pick(SIGNER, SIGNER, SIGNER, RSA_KEY, HMAC_KEY, PRIMARY)

    def policy_session(self) -> int:
        return self.pick(self.ep.policy_session, self.ep.policy_session, self.ep.policy_session, self.ep.hmac_session,
                         0x03000001)

    def nv(self, *preferred: int) -> int:
        return self.rng.choice(preferred) if preferred and self.rng.random() < 0.8 else self.rng.choice(NV_INDICES)

    def pcr(self) -> int:
        return self.rng.choice((0, 7, 16, 23, self.rng.randrange(24), 20, 21, 22))

    def hash_alg(self, null: bool = False) -> int:
        return self.rng.choice(HASH_ALGS + ((ALG.NULL,) if null else ()) + (ALG.SHA256, ALG.SHA256))

    def data(self, n: int | None = None) -> bytes:
        n = self.rng.choice((0, 1, 16, 20, 32, 48, 64, 100, 1024)) if n is None else n
        return self.rng.randbytes(min(n, 64)) + bytes(max(0, n - 64))

    def auth(self, n: int = 1) -> list[AuthEntry]:
        """n authorizations: mostly the empty password, sometimes the HMAC or policy session."""
        entries = []
        for _ in range(n):
            roll = self.rng.random()
            if roll < 0.78 or self.ep.hmac_session is None:
                entries.append(AuthEntry())
            elif roll < 0.95:
                attributes = CONTINUE
                if self.ep.session_symmetric != ALG.NULL and self.rng.random() < 0.5:
                    attributes |= self.rng.choice((TPMA_SESSION.DECRYPT, TPMA_SESSION.ENCRYPT,
                                                   TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT))
                entries.append(AuthEntry(self.ep.hmac_session, bytes(16), attributes))
            else:
                entries.append(AuthEntry(self.pick(self.ep.policy_session, RH.PW), bytes(16), CONTINUE))
        return entries

    def pcr_banks(self) -> list[tuple[int, bytes]]:
        banks = self.rng.sample(HASH_ALGS, self.rng.choice((1, 1, 2, 4)))
        return [(alg, self.rng.choice((b"\xff\x00\x00", b"\x01\x00\x00", b"\x00\x00\x80", bytes(3),
                                       self.rng.randbytes(3)))) for alg in banks]

    def scheme(self, w: Writer, *options: int) -> Writer:
        return asym_scheme(w, self.rng.choice(options or (ALG.NULL, ALG.ECDSA, ALG.RSASSA, ALG.RSAPSS, ALG.HMAC)),
                           self.hash_alg())

    def template(self) -> Writer:
        """A public area for Create/CreateLoaded/CreatePrimary: cheap keys mostly, an RSA key now and then."""
        roll = self.rng.randrange(12)
        if roll == 11 and self.rng.random() >= self.rsa_rate:
            roll = self.rng.randrange(11)
        if roll < 3:
            return ecc_storage((self.data(self.rng.choice((0, 32))), b""))
        if roll < 5:
            return ecc_signer()
        if roll == 5:
            return aes_key(self.rng.choice((128, 256)), self.rng.choice((ALG.CFB, ALG.CBC, ALG.NULL)))
        if roll == 6:
            return hmac_key()
        if roll == 7:
            return sealed_data()
        if roll == 8:
            return duplicable_child()
        if roll == 9:
            return public_area(ALG.ECC, KEY | A.DECRYPT, scheme=(ALG.ECDH, ALG.SHA256),
                               curve=self.rng.choice((ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521)))
        if roll == 10:
            return public_area(ALG.ECC, KEY | A.SIGN_ENCRYPT | A.RESTRICTED, scheme=(ALG.ECDSA, self.hash_alg()),
                               name_alg=self.hash_alg())
        return rsa_key(1024)


def _frame(code: int, handles: list[int], sessions: list[AuthEntry] | None = None, params: Writer | None = None) -> Frame:
    return Frame(code, handles, sessions, params or writer(), target=code)


SeedFn = Callable[[SeedContext], Frame]
SEEDS: dict[int, SeedFn] = {}


def seed(code: int) -> Callable[[SeedFn], SeedFn]:
    def register(fn: SeedFn) -> SeedFn:
        SEEDS[int(code)] = fn
        return fn

    return register


def missing_seeds() -> list[str]:
    return sorted(COMMANDS[code].code.name for code in COMMANDS if code not in SEEDS)


# --- 9 start-up, 10 testing


@seed(CC.Startup)
def _startup(c: SeedContext) -> Frame:
    return _frame(CC.Startup, [], None, writer().u16(c.rng.choice((0, 1, 0, 2))))


@seed(CC.Shutdown)
def _shutdown(c: SeedContext) -> Frame:
    return _frame(CC.Shutdown, [], c.rng.choice((None, None, [])), writer().u16(c.rng.choice((0, 1, 1, 2))))


@seed(CC.SelfTest)
def _self_test(c: SeedContext) -> Frame:
    return _frame(CC.SelfTest, [], None, writer().u8(c.rng.choice((0, 1, 2))))


@seed(CC.IncrementalSelfTest)
def _incremental_self_test(c: SeedContext) -> Frame:
    algs = c.rng.sample((ALG.SHA1, ALG.SHA256, ALG.AES, ALG.RSA, ALG.ECC, ALG.HMAC, ALG.NULL, 0x7777), c.rng.randrange(5))
    w = writer().count(len(algs))
    for alg in algs:
        w.u16(alg)
    return _frame(CC.IncrementalSelfTest, [], None, w)


@seed(CC.GetTestResult)
def _get_test_result(c: SeedContext) -> Frame:
    return _frame(CC.GetTestResult, [])


# --- 11 sessions


@seed(CC.StartAuthSession)
def _start_auth_session(c: SeedContext) -> Frame:
    rng = c.rng
    key = c.pick(RH.NULL, RH.NULL, RSA_KEY, PRIMARY, SIGNER)
    bind = c.pick(RH.NULL, RH.NULL, RH.OWNER, PRIMARY, NV_ORDINARY, 0, RH.ENDORSEMENT, RH.LOCKOUT)
    w = writer().b(c.data(rng.choice((16, 20, 32, 8, 64)))).b(b"" if key == RH.NULL else c.data(rng.choice((256, 68, 0))))
    w.u8(rng.choice((0, 1, 3, 0, 1, 2)))
    choice = rng.randrange(4)
    if choice == 0:
        sym_def_session(w)
    elif choice == 1:
        sym_def_session(w, ALG.AES, rng.choice((128, 256, 192, 64)), rng.choice((ALG.CFB, ALG.CFB, ALG.CBC)))
    elif choice == 2:
        sym_def_session(w, ALG.XOR, c.hash_alg())
    else:
        sym_def_session(w, rng.choice((ALG.TDES, ALG.CAMELLIA, ALG.SM4, 0x1234)), 128, ALG.CFB)
    w.u16(c.hash_alg())
    return _frame(CC.StartAuthSession, [key, bind], None, w)


@seed(CC.PolicyRestart)
def _policy_restart(c: SeedContext) -> Frame:
    return _frame(CC.PolicyRestart, [c.policy_session()])


# --- 12 objects


def _creation_params(c: SeedContext, w: Writer) -> Writer:
    w.b(c.data(c.rng.choice((0, 0, 16, 66))))
    return pcr_selection(w, c.pcr_banks() if c.rng.random() < 0.3 else [])


@seed(CC.Create)
def _create(c: SeedContext) -> Frame:
    template = c.template()
    data = b"fuzz data" if c.rng.random() < 0.2 else b""
    w = writer().sized(sensitive_create(c.data(c.rng.choice((0, 0, 8, 32))), data)).sized(template)
    return _frame(CC.Create, [c.parent()], c.auth(), _creation_params(c, w))


@seed(CC.CreatePrimary)
def _create_primary(c: SeedContext) -> Frame:
    roll = c.rng.random()
    # the cached RSA primary's template now and then (mutated, it makes the TPM derive a new RSA key: slow)
    template = (c.art.rsa_primary_template if roll < 0.06 * c.rsa_rate else c.template().bytes() if roll < 0.35
                else ecc_storage().bytes())
    w = writer().sized(sensitive_create(c.data(c.rng.choice((0, 0, 16))))).b(template)
    return _frame(CC.CreatePrimary, [c.pick(*HIERARCHIES, RH.OWNER)], c.auth(), _creation_params(c, w))


@seed(CC.CreateLoaded)
def _create_loaded(c: SeedContext) -> Frame:
    w = writer().sized(sensitive_create(c.data(c.rng.choice((0, 16))))).sized(c.template())
    return _frame(CC.CreateLoaded, [c.pick(PRIMARY, PRIMARY, RH.OWNER, RH.ENDORSEMENT, RH.NULL, c.ep.child)], c.auth(), w)


@seed(CC.Load)
def _load_seed(c: SeedContext) -> Frame:
    return _frame(CC.Load, [c.parent()], c.auth(), writer().b(c.art.child_private).b(c.art.child_public))


@seed(CC.LoadExternal)
def _load_external(c: SeedContext) -> Frame:
    w = writer()
    if c.rng.random() < 0.6:
        w.b(b"").b(c.art.publics[c.pick(SIGNER, RSA_KEY, PRIMARY)])
        w.u32(c.pick(RH.NULL, RH.OWNER, RH.ENDORSEMENT))
    else:  # an external AES key with its sensitive area
        secret = c.data(c.rng.choice((16, 32)))
        unique = hashlib.sha256(b"\x00" * 32 + secret).digest()
        public = public_area(ALG.SYMCIPHER, A.USER_WITH_AUTH | A.DECRYPT | A.SIGN_ENCRYPT,
                             sym=(ALG.AES, 8 * len(secret), ALG.CFB), unique=unique)
        sensitive = writer().u16(ALG.SYMCIPHER).b(b"").b(b"\x00" * 32).b(secret)
        w.sized(sensitive).sized(public).u32(c.pick(RH.NULL, RH.NULL, RH.OWNER))
    return _frame(CC.LoadExternal, [], None, w)


@seed(CC.ReadPublic)
def _read_public_seed(c: SeedContext) -> Frame:
    return _frame(CC.ReadPublic, [c.any_object()])


@seed(CC.ActivateCredential)
def _activate_credential(c: SeedContext) -> Frame:
    w = writer().b(c.art.credential_blob).b(c.art.credential_secret)
    return _frame(CC.ActivateCredential, [c.pick(SIGNER, SIGNER, c.ep.child), c.pick(PRIMARY, PRIMARY, RSA_KEY)],
                  c.auth(2), w)


@seed(CC.MakeCredential)
def _make_credential(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((32, 16, 64, 0)))).b(c.art.names[c.pick(*PERSISTENT)])
    return _frame(CC.MakeCredential, [c.pick(PRIMARY, PRIMARY, RSA_KEY, c.ep.child)], None, w)


@seed(CC.Unseal)
def _unseal(c: SeedContext) -> Frame:
    return _frame(CC.Unseal, [c.pick(SEALED, SEALED, SEALED, HMAC_KEY, SIGNER)], c.auth())


@seed(CC.ObjectChangeAuth)
def _object_change_auth(c: SeedContext) -> Frame:
    return _frame(CC.ObjectChangeAuth, [c.pick(c.ep.child, SIGNER), c.pick(PRIMARY, PRIMARY, RSA_KEY)], c.auth(),
                  writer().b(c.data(c.rng.choice((0, 8, 32, 33)))))


# --- 13 duplication


@seed(CC.Duplicate)
def _duplicate(c: SeedContext) -> Frame:
    w = writer().b(b"" if c.rng.random() < 0.7 else c.data(16))
    sym_def(w, *c.rng.choice(((ALG.NULL, 0, 0), AES_128_CFB, (ALG.AES, 256, ALG.CFB))))
    sessions = [AuthEntry(c.pick(c.ep.policy_session, c.ep.policy_session, RH.PW), b"", c.rng.choice((0, CONTINUE)))]
    frame = _frame(CC.Duplicate, [c.pick(c.ep.child, c.ep.child, SIGNER), c.pick(PRIMARY, PRIMARY, RH.NULL, RSA_KEY)],
                   sessions, w)
    if sessions[0].handle == c.ep.policy_session and c.rng.random() < 0.7:
        frame.prelude = c.policy_prelude(CC.Duplicate)
    return frame


@seed(CC.Import)
def _import(c: SeedContext) -> Frame:
    w = writer().b(b"").b(c.art.child_public).b(c.art.duplicate).b(c.art.duplicate_seed)
    sym_def(w)
    return _frame(CC.Import, [c.pick(PRIMARY, PRIMARY, RSA_KEY)], c.auth(), w)


# --- 14 asymmetric


@seed(CC.RSA_Encrypt)
def _rsa_encrypt(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((0, 16, 32, 190, 256))))
    c.scheme(w, ALG.NULL, ALG.RSAES, ALG.OAEP, ALG.OAEP)
    w.b(c.rng.choice((b"", b"label\x00", c.data(8))))
    return _frame(CC.RSA_Encrypt, [c.pick(RSA_KEY, RSA_KEY, PRIMARY, SIGNER)], None, w)


@seed(CC.RSA_Decrypt)
def _rsa_decrypt(c: SeedContext) -> Frame:
    w = writer().b(c.art.rsa_ciphertext if c.rng.random() < 0.7 else c.data(256))
    if c.rng.random() < 0.6:
        asym_scheme(w, ALG.OAEP, ALG.SHA256)
    else:
        c.scheme(w, ALG.NULL, ALG.RSAES, ALG.OAEP)
    w.b(c.rng.choice((b"", b"", b"label\x00")))
    return _frame(CC.RSA_Decrypt, [c.pick(RSA_KEY, RSA_KEY, PRIMARY)], c.auth(), w)


@seed(CC.ECDH_KeyGen)
def _ecdh_keygen(c: SeedContext) -> Frame:
    return _frame(CC.ECDH_KeyGen, [c.pick(c.ep.child, PRIMARY, SIGNER, RSA_KEY)])


@seed(CC.ECDH_ZGen)
def _ecdh_zgen(c: SeedContext) -> Frame:
    x, y = c.art.signer_point
    if c.rng.random() < 0.2:
        y = bytes(len(y) - 1) + b"\x01"  # off the curve
    return _frame(CC.ECDH_ZGen, [c.pick(c.ep.child, c.ep.child, PRIMARY, SIGNER)], c.auth(),
                  writer().sized(writer().b(x).b(y)))


# --- 15 symmetric


def _encrypt_decrypt(c: SeedContext, code: int) -> Frame:
    rng = c.rng
    data = c.data(rng.choice((16, 32, 17, 0, 1024)))
    iv = c.data(rng.choice((16, 16, 0, 15)))
    decrypt = rng.choice((0, 1))
    mode = rng.choice((ALG.CFB, ALG.NULL, ALG.CBC, ALG.CTR, ALG.OFB, ALG.ECB, ALG.SHA256))
    w = writer()
    if code == CC.EncryptDecrypt:
        w.u8(decrypt).u16(mode).b(iv).b(data)
    else:
        w.b(data).u8(decrypt).u16(mode).b(iv)
    return _frame(code, [c.pick(AES_KEY, AES_KEY, AES_KEY, HMAC_KEY, PRIMARY)], c.auth(), w)


@seed(CC.EncryptDecrypt)
def _encrypt_decrypt_1(c: SeedContext) -> Frame:
    return _encrypt_decrypt(c, CC.EncryptDecrypt)


@seed(CC.EncryptDecrypt2)
def _encrypt_decrypt_2(c: SeedContext) -> Frame:
    return _encrypt_decrypt(c, CC.EncryptDecrypt2)


@seed(CC.Hash)
def _hash(c: SeedContext) -> Frame:
    w = writer().b(c.data()).u16(c.hash_alg()).u32(c.pick(RH.NULL, RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM))
    return _frame(CC.Hash, [], None, w)


@seed(CC.HMAC)
def _hmac(c: SeedContext) -> Frame:
    w = writer().b(c.data()).u16(c.pick(ALG.NULL, ALG.SHA256, ALG.SHA1, ALG.SHA384))
    return _frame(CC.HMAC, [c.pick(HMAC_KEY, HMAC_KEY, AES_KEY, SIGNER)], c.auth(), w)


# --- 16 random


@seed(CC.GetRandom)
def _get_random(c: SeedContext) -> Frame:
    return _frame(CC.GetRandom, [], None, writer().u16(c.rng.choice((0, 1, 16, 32, 48, 64, 65, 1024, 0xFFFF))))


@seed(CC.StirRandom)
def _stir_random(c: SeedContext) -> Frame:
    return _frame(CC.StirRandom, [], None, writer().b(c.data(c.rng.choice((0, 16, 128, 129)))))


# --- 17 sequences


@seed(CC.HMAC_Start)
def _hmac_start(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((0, 0, 16, 32)))).u16(c.pick(ALG.NULL, ALG.SHA256, ALG.SHA1))
    return _frame(CC.HMAC_Start, [c.pick(HMAC_KEY, HMAC_KEY, AES_KEY, SIGNER)], c.auth(), w)


@seed(CC.HashSequenceStart)
def _hash_sequence_start(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((0, 0, 16)))).u16(c.hash_alg(null=True))
    return _frame(CC.HashSequenceStart, [], None, w)


def _sequence(c: SeedContext) -> int:
    return c.pick(c.ep.sequence, c.ep.sequence, c.ep.sequence, c.ep.child, 0x80000002)


@seed(CC.SequenceUpdate)
def _sequence_update(c: SeedContext) -> Frame:
    return _frame(CC.SequenceUpdate, [_sequence(c)], c.auth(), writer().b(c.data()))


@seed(CC.SequenceComplete)
def _sequence_complete(c: SeedContext) -> Frame:
    w = writer().b(c.data()).u32(c.pick(RH.NULL, RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM))
    return _frame(CC.SequenceComplete, [_sequence(c)], c.auth(), w)


@seed(CC.EventSequenceComplete)
def _event_sequence_complete(c: SeedContext) -> Frame:
    return _frame(CC.EventSequenceComplete, [c.pick(RH.NULL, c.pcr(), 16), _sequence(c)], c.auth(2),
                  writer().b(c.data()))


# --- 18 attestation, 20 signing


def _sign_scheme(c: SeedContext, w: Writer) -> Writer:
    return c.scheme(w, ALG.NULL, ALG.NULL, ALG.ECDSA, ALG.RSASSA, ALG.RSAPSS, ALG.HMAC, ALG.ECDAA)


@seed(CC.Certify)
def _certify(c: SeedContext) -> Frame:
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16, 32)))))
    return _frame(CC.Certify, [c.pick(SIGNER, PRIMARY, c.ep.child, SEALED), c.pick(c.signer(), RH.NULL)], c.auth(2), w)


@seed(CC.CertifyCreation)
def _certify_creation(c: SeedContext) -> Frame:
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16)))).b(c.art.creation_hash)).raw(c.art.creation_ticket)
    return _frame(CC.CertifyCreation, [c.pick(c.signer(), RH.NULL), c.pick(c.ep.child, c.ep.child, SIGNER)], c.auth(), w)


@seed(CC.Quote)
def _quote(c: SeedContext) -> Frame:
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16, 32)))))
    return _frame(CC.Quote, [c.pick(c.signer(), RH.NULL)], c.auth(), pcr_selection(w, c.pcr_banks()))


@seed(CC.GetTime)
def _get_time(c: SeedContext) -> Frame:
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16)))))
    return _frame(CC.GetTime, [c.pick(RH.ENDORSEMENT, RH.ENDORSEMENT, RH.OWNER), c.pick(c.signer(), RH.NULL)], c.auth(2), w)


@seed(CC.Sign)
def _sign_seed(c: SeedContext) -> Frame:
    rng = c.rng
    key = c.signer()
    if rng.random() < 0.4:
        w = writer().b(c.art.hashed)
        _sign_scheme(c, w).raw(c.art.hash_ticket)
    else:
        w = writer().b(c.data(rng.choice((32, 20, 48, 64, 0, 31))))
        _sign_scheme(c, w)
        ticket(w, c.pick(ST.HASHCHECK, ST.HASHCHECK, ST.VERIFIED), c.pick(RH.NULL, RH.NULL, RH.OWNER))
    return _frame(CC.Sign, [key], c.auth(), w)


@seed(CC.VerifySignature)
def _verify_signature(c: SeedContext) -> Frame:
    roll = c.rng.randrange(4)
    if roll < 2:
        w = writer().b(c.art.signed_digest).raw(c.art.signature)
    elif roll == 2:  # an RSA or HMAC signature of every shape
        w = writer().b(c.data(32)).u16(c.pick(ALG.RSASSA, ALG.RSAPSS, ALG.HMAC, ALG.NULL))
        alg = c.hash_alg()
        w.u16(alg)
        w.b(c.data(256)) if c.rng.random() < 0.5 else w.raw(c.data(DIGEST[alg]))
    else:
        w = writer().b(c.data(32)).u16(ALG.ECDSA).u16(c.hash_alg()).b(c.data(32)).b(c.data(32))
    return _frame(CC.VerifySignature, [c.pick(SIGNER, SIGNER, RSA_KEY, HMAC_KEY, PRIMARY)], None, w)


# --- 22 PCRs


def _digest_values(c: SeedContext) -> Writer:
    algs = c.rng.sample(HASH_ALGS, c.rng.choice((1, 1, 2, 4)))
    w = writer().count(len(algs))
    for alg in algs:
        w.u16(alg).raw(c.data(DIGEST[alg]))
    return w


@seed(CC.PCR_Extend)
def _pcr_extend(c: SeedContext) -> Frame:
    return _frame(CC.PCR_Extend, [c.pick(c.pcr(), 16, RH.PLATFORM)], c.auth(), _digest_values(c))


@seed(CC.PCR_Event)
def _pcr_event(c: SeedContext) -> Frame:
    return _frame(CC.PCR_Event, [c.pick(c.pcr(), 16, RH.NULL)], c.auth(), writer().b(c.data()))


@seed(CC.PCR_Read)
def _pcr_read(c: SeedContext) -> Frame:
    return _frame(CC.PCR_Read, [], None, pcr_selection(writer(), c.pcr_banks()))


@seed(CC.PCR_Allocate)
def _pcr_allocate(c: SeedContext) -> Frame:
    return _frame(CC.PCR_Allocate, [c.pick(RH.PLATFORM, RH.PLATFORM, RH.OWNER)], c.auth(),
                  pcr_selection(writer(), c.pcr_banks()))


@seed(CC.PCR_SetAuthPolicy)
def _pcr_set_auth_policy(c: SeedContext) -> Frame:
    alg = c.hash_alg(null=True)
    w = writer().b(c.data(DIGEST.get(alg, 0))).u16(alg).u32(c.pick(20, 21, 22, c.pcr()))
    return _frame(CC.PCR_SetAuthPolicy, [RH.PLATFORM], c.auth(), w)


@seed(CC.PCR_SetAuthValue)
def _pcr_set_auth_value(c: SeedContext) -> Frame:
    return _frame(CC.PCR_SetAuthValue, [c.pick(20, 21, 22, c.pcr())], c.auth(), writer().b(c.data(c.rng.choice((0, 32)))))


@seed(CC.PCR_Reset)
def _pcr_reset(c: SeedContext) -> Frame:
    return _frame(CC.PCR_Reset, [c.pick(16, 23, 20, c.pcr())], c.auth())


# --- 23 enhanced authorization


@seed(CC.PolicySigned)
def _policy_signed(c: SeedContext) -> Frame:
    rng = c.rng
    if rng.random() < 0.5:
        w = writer().b(b"").b(b"").b(b"").i32(0).raw(c.art.policy_signed_auth)
    else:
        w = writer().b(c.ep.policy_nonce if rng.random() < 0.5 else b"").b(c.data(c.rng.choice((0, 32)))).b(c.data(c.rng.choice((0, 8))))
        w.i32(rng.choice((0, -1, 1, -100000, 0x7FFFFFFF, -0x80000000))).raw(c.art.signature)
    return _frame(CC.PolicySigned, [c.pick(SIGNER, SIGNER, RSA_KEY, HMAC_KEY), c.policy_session()], None, w)


@seed(CC.PolicySecret)
def _policy_secret(c: SeedContext) -> Frame:
    rng = c.rng
    w = writer().b(c.ep.policy_nonce if rng.random() < 0.5 else b"").b(c.data(rng.choice((0, 0, 32))))
    w.b(c.data(rng.choice((0, 0, 16)))).i32(rng.choice((0, 0, -1, -1000, 1000, 0x7FFFFFFF)))
    auth = c.pick(RH.OWNER, RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.LOCKOUT, NV_ORDINARY, PRIMARY, SIGNER, 16)
    return _frame(CC.PolicySecret, [auth, c.policy_session()], c.auth(), w)


@seed(CC.PolicyTicket)
def _policy_ticket(c: SeedContext) -> Frame:
    if c.transact is not None and c.ep.policy_session is not None and c.rng.random() < 0.5:
        # a ticket of this power cycle: PolicySigned with a negative expiration returns one
        signed = writer().b(b"").b(b"").b(b"").i32(TICKET_EXPIRATION).raw(c.art.ticket_auth)
        response = wire.parse_response(c.transact(Frame(CC.PolicySigned, [SIGNER, c.ep.policy_session], None,
                                                        signed).build()[0]))
        if response.ok:
            body = response.parameters()
            timeout, offset = _tpm2b(body, 0)
            w = writer().b(timeout).b(b"").b(b"").b(c.art.names[SIGNER]).raw(body[offset:])
            return _frame(CC.PolicyTicket, [c.policy_session()], None, w)
    w = writer().b(c.data(c.rng.choice((8, 8, 0, 4)))).b(b"").b(b"").b(c.art.names[c.pick(SIGNER, PRIMARY)])
    ticket(w, c.pick(ST.AUTH_SIGNED, ST.AUTH_SECRET, ST.HASHCHECK), c.pick(RH.OWNER, RH.NULL, RH.ENDORSEMENT), c.data(32))
    return _frame(CC.PolicyTicket, [c.policy_session()], None, w)


@seed(CC.PolicyOR)
def _policy_or(c: SeedContext) -> Frame:
    n = c.rng.choice((2, 2, 3, 8, 1, 0, 9))
    branches = [c.data(c.rng.choice((32, 32, 20, 0))) for _ in range(n)]
    if branches and c.rng.random() < 0.5:  # a fresh or restarted session's digest: this OR can succeed
        branches[c.rng.randrange(n)] = bytes(32)
    w = writer().count(n)
    for branch in branches:
        w.b(branch)
    frame = _frame(CC.PolicyOR, [c.policy_session()], None, w)
    if c.ep.policy_session is not None and c.rng.random() < 0.3:
        frame.prelude = [bytes(Frame(CC.PolicyRestart, [c.ep.policy_session]).build()[0])]
    return frame


@seed(CC.PolicyPCR)
def _policy_pcr(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((0, 0, 32, 20))))
    return _frame(CC.PolicyPCR, [c.policy_session()], None, pcr_selection(w, c.pcr_banks()))


@seed(CC.PolicyLocality)
def _policy_locality(c: SeedContext) -> Frame:
    return _frame(CC.PolicyLocality, [c.policy_session()], None,
                  writer().u8(c.rng.choice((1, 2, 4, 8, 16, 0x1F, 0, 32, 33, 255, 0x60))))


def _condition(c: SeedContext, w: Writer, room: int) -> Writer:
    rng = c.rng
    operand = c.data(rng.choice((1, 2, 4, 8, 0, 16, 64)))
    return w.b(operand).u16(rng.choice((0, 0, 1, 4, 8, room, room + 1))).u16(rng.randrange(0, 13))


@seed(CC.PolicyNV)
def _policy_nv(c: SeedContext) -> Frame:
    index = c.nv(NV_ORDINARY, NV_COUNTER, NV_BITS, NV_EXTEND)
    return _frame(CC.PolicyNV, [c.pick(index, index, RH.OWNER, RH.PLATFORM), index, c.policy_session()], c.auth(),
                  _condition(c, writer(), 64))


@seed(CC.PolicyCounterTimer)
def _policy_counter_timer(c: SeedContext) -> Frame:
    return _frame(CC.PolicyCounterTimer, [c.policy_session()], None, _condition(c, writer(), 25))


@seed(CC.PolicyCommandCode)
def _policy_command_code(c: SeedContext) -> Frame:
    code = c.rng.choice((CC.Duplicate, CC.NV_Read, CC.NV_UndefineSpaceSpecial, c.rng.choice(sorted(COMMANDS)), 0, 0x1FF))
    return _frame(CC.PolicyCommandCode, [c.policy_session()], None, writer().u32(code))


@seed(CC.PolicyCpHash)
def _policy_cp_hash(c: SeedContext) -> Frame:
    return _frame(CC.PolicyCpHash, [c.policy_session()], None, writer().b(c.data(c.rng.choice((32, 32, 20, 0, 64)))))


@seed(CC.PolicyNameHash)
def _policy_name_hash(c: SeedContext) -> Frame:
    return _frame(CC.PolicyNameHash, [c.policy_session()], None, writer().b(c.data(c.rng.choice((32, 32, 20, 0)))))


@seed(CC.PolicyDuplicationSelect)
def _policy_duplication_select(c: SeedContext) -> Frame:
    w = writer().b(c.art.child_name).b(c.art.names[c.pick(PRIMARY, RSA_KEY)]).u8(c.rng.choice((0, 1, 2)))
    return _frame(CC.PolicyDuplicationSelect, [c.policy_session()], None, w)


@seed(CC.PolicyAuthorize)
def _policy_authorize(c: SeedContext) -> Frame:
    w = writer().b(c.art.approved_policy if c.rng.random() < 0.7 else c.data(32)).b(b"")
    w.b(c.art.names[SIGNER] if c.rng.random() < 0.8 else c.data(c.rng.choice((2, 34, 0))))
    w.raw(c.art.verified_ticket) if c.rng.random() < 0.7 else ticket(w, ST.VERIFIED, RH.OWNER, c.data(32))
    frame = _frame(CC.PolicyAuthorize, [c.policy_session()], None, w)
    if c.rng.random() < 0.6:
        frame.prelude = c.policy_prelude(CC.NV_Read)
    return frame


@seed(CC.PolicyAuthValue)
def _policy_auth_value(c: SeedContext) -> Frame:
    return _frame(CC.PolicyAuthValue, [c.policy_session()])


@seed(CC.PolicyPassword)
def _policy_password(c: SeedContext) -> Frame:
    return _frame(CC.PolicyPassword, [c.policy_session()])


@seed(CC.PolicyGetDigest)
def _policy_get_digest(c: SeedContext) -> Frame:
    return _frame(CC.PolicyGetDigest, [c.policy_session()])


@seed(CC.PolicyNvWritten)
def _policy_nv_written(c: SeedContext) -> Frame:
    return _frame(CC.PolicyNvWritten, [c.policy_session()], None, writer().u8(c.rng.choice((0, 1, 2))))


# --- 24 hierarchy, 25 dictionary attack


@seed(CC.HierarchyControl)
def _hierarchy_control(c: SeedContext) -> Frame:
    w = writer().u32(c.pick(RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.PLATFORM_NV, RH.NULL)).u8(c.rng.choice((0, 1, 1)))
    return _frame(CC.HierarchyControl, [c.pick(RH.PLATFORM, RH.OWNER, RH.ENDORSEMENT)], c.auth(), w)


@seed(CC.SetPrimaryPolicy)
def _set_primary_policy(c: SeedContext) -> Frame:
    alg = c.hash_alg(null=True)
    w = writer().b(c.data(DIGEST.get(alg, 0) if c.rng.random() < 0.8 else 20)).u16(alg)
    return _frame(CC.SetPrimaryPolicy, [c.pick(*AUTH_HIERARCHIES)], c.auth(), w)


@seed(CC.ChangePPS)
def _change_pps(c: SeedContext) -> Frame:
    return _frame(CC.ChangePPS, [RH.PLATFORM], c.auth())


@seed(CC.ChangeEPS)
def _change_eps(c: SeedContext) -> Frame:
    return _frame(CC.ChangeEPS, [RH.PLATFORM], c.auth())


@seed(CC.Clear)
def _clear(c: SeedContext) -> Frame:
    return _frame(CC.Clear, [c.pick(RH.LOCKOUT, RH.PLATFORM)], c.auth())


@seed(CC.ClearControl)
def _clear_control(c: SeedContext) -> Frame:
    return _frame(CC.ClearControl, [c.pick(RH.LOCKOUT, RH.PLATFORM)], c.auth(), writer().u8(c.rng.choice((0, 1, 2))))


@seed(CC.HierarchyChangeAuth)
def _hierarchy_change_auth(c: SeedContext) -> Frame:
    return _frame(CC.HierarchyChangeAuth, [c.pick(*AUTH_HIERARCHIES)], c.auth(),
                  writer().b(c.data(c.rng.choice((0, 0, 8, 32, 64, 65)))))


@seed(CC.DictionaryAttackLockReset)
def _da_lock_reset(c: SeedContext) -> Frame:
    return _frame(CC.DictionaryAttackLockReset, [RH.LOCKOUT], c.auth())


@seed(CC.DictionaryAttackParameters)
def _da_parameters(c: SeedContext) -> Frame:
    rng = c.rng
    w = writer().u32(rng.choice((3, 32, 0, 1, 0xFFFFFFFF))).u32(rng.choice((1000, 0, 1, 0xFFFFFFFF)))
    w.u32(rng.choice((1000, 0, 0xFFFFFFFF)))
    return _frame(CC.DictionaryAttackParameters, [RH.LOCKOUT], c.auth(), w)


# --- 28 contexts


@seed(CC.ContextSave)
def _context_save(c: SeedContext) -> Frame:
    return _frame(CC.ContextSave, [c.pick(c.ep.child, c.ep.child, c.ep.sequence, c.ep.hmac_session, c.ep.policy_session,
                                          0x80000002)])


@seed(CC.ContextLoad)
def _context_load(c: SeedContext) -> Frame:
    if c.rng.random() < 0.7:
        return _frame(CC.ContextLoad, [], None, writer().raw(c.art.context_blob))
    w = writer().u64(c.rng.choice((1, 2, 0xFFFFFFFFFFFFFFFF))).u32(c.pick(0x80000000, 0x80000001, 0x80000002, 0x02000000,
                                                                          0x03000000))
    w.u32(c.pick(RH.OWNER, RH.NULL, RH.ENDORSEMENT, RH.PLATFORM)).b(c.data(c.rng.choice((0, 34, 100))))
    return _frame(CC.ContextLoad, [], None, w)


@seed(CC.FlushContext)
def _flush_context(c: SeedContext) -> Frame:
    handle = c.pick(c.ep.child, c.ep.sequence, c.ep.hmac_session, c.ep.policy_session, 0x80000002, 0x02000001,
                    0x03000002, PRIMARY, RH.OWNER, 0x80000003)
    return _frame(CC.FlushContext, [], None, writer().handle(handle))


@seed(CC.EvictControl)
def _evict_control(c: SeedContext) -> Frame:
    if c.rng.random() < 0.6:
        obj, target = c.pick(c.ep.child, 0x80000002, PRIMARY), c.pick(FREE_PERSISTENT, FREE_PERSISTENT, 0x81800001, 0x81000008)
    else:
        obj = c.pick(*PERSISTENT, FREE_PERSISTENT)
        target = c.pick(obj, obj, SIGNER)
    return _frame(CC.EvictControl, [c.pick(RH.OWNER, RH.OWNER, RH.PLATFORM), obj], c.auth(), writer().handle(target))


# --- 29 clock, 30 capability


@seed(CC.ReadClock)
def _read_clock(c: SeedContext) -> Frame:
    return _frame(CC.ReadClock, [])


@seed(CC.ClockSet)
def _clock_set(c: SeedContext) -> Frame:
    value = c.rng.choice((0, 1 << 40, 0xFFFF000000000000, 0xFFFF000000000001, 1 << 30, c.rng.getrandbits(48)))
    return _frame(CC.ClockSet, [c.pick(RH.OWNER, RH.PLATFORM)], c.auth(), writer().u64(value))


@seed(CC.ClockRateAdjust)
def _clock_rate_adjust(c: SeedContext) -> Frame:
    return _frame(CC.ClockRateAdjust, [c.pick(RH.OWNER, RH.PLATFORM)], c.auth(),
                  writer().u8(c.rng.choice((0, 1, 2, 3, 0xFF, 0xFE, 0xFD, 4, 0x80))))


@seed(CC.GetCapability)
def _get_capability(c: SeedContext) -> Frame:
    rng = c.rng
    cap = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x100, rng.getrandbits(32)))
    prop = rng.choice((0, 1, 0x100, 0x200, 0x40000000, 0x81000000, 0x01000000, 0x80000000, 0x02000000, 0x0000011F,
                       rng.getrandbits(32)))
    count = rng.choice((0, 1, 8, 64, 255, 0xFFFFFFFF, 0x10000))
    return _frame(CC.GetCapability, [], None, writer().u32(cap).u32(prop).u32(count))


@seed(CC.TestParms)
def _test_parms(c: SeedContext) -> Frame:
    rng = c.rng
    kind = rng.choice((ALG.RSA, ALG.ECC, ALG.KEYEDHASH, ALG.SYMCIPHER, ALG.AES, 0x1234))
    w = writer().u16(kind)
    if kind == ALG.RSA:
        sym_def(w, *rng.choice(((ALG.NULL, 0, 0), AES_128_CFB)))
        asym_scheme(w, rng.choice((ALG.NULL, ALG.RSASSA, ALG.OAEP)), c.hash_alg())
        w.u16(rng.choice((1024, 2048, 3072, 4096, 1000, 0))).u32(rng.choice((0, 65537, 3, 2)))
    elif kind == ALG.ECC:
        sym_def(w)
        asym_scheme(w, rng.choice((ALG.NULL, ALG.ECDSA, ALG.ECDH)), c.hash_alg())
        w.u16(rng.choice((1, 2, 3, 4, 5, 0x10, 0x20, 0)))
        kdf_scheme(w, rng.choice((ALG.NULL, ALG.KDF1_SP800_108)))
    elif kind == ALG.KEYEDHASH:
        keyedhash_scheme(w, rng.choice((ALG.NULL, ALG.HMAC, ALG.XOR)), c.hash_alg())
    else:
        sym_def(w, ALG.AES, rng.choice((128, 192, 256, 64)), rng.choice((ALG.CFB, ALG.NULL, ALG.CBC)))
    return _frame(CC.TestParms, [], None, w)


# --- 31 NV


@seed(CC.NV_DefineSpace)
def _nv_define_space(c: SeedContext) -> Frame:
    rng = c.rng
    platform = rng.random() < 0.25
    kind = rng.choice((NT.ORDINARY, NT.ORDINARY, NT.COUNTER, NT.BITS, NT.EXTEND, NT.PIN_FAIL, NT.PIN_PASS, 3, 15))
    attributes = (kind << 4) | rng.choice((TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD, TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD,
                                           TPMA_NV.PPWRITE | TPMA_NV.PPREAD, TPMA_NV.POLICYWRITE | TPMA_NV.POLICYREAD))
    attributes |= rng.choice((0, TPMA_NV.NO_DA, TPMA_NV.ORDERLY, TPMA_NV.CLEAR_STCLEAR, TPMA_NV.WRITEALL,
                              TPMA_NV.WRITEDEFINE, TPMA_NV.GLOBALLOCK, TPMA_NV.READ_STCLEAR | TPMA_NV.WRITE_STCLEAR))
    if platform:
        attributes |= TPMA_NV.PLATFORMCREATE | rng.choice((0, TPMA_NV.POLICY_DELETE))
    alg = c.hash_alg()
    size = {NT.COUNTER: 8, NT.BITS: 8, NT.PIN_FAIL: 8, NT.PIN_PASS: 8, NT.EXTEND: DIGEST[alg]}.get(kind, rng.choice((0, 1, 32, 1024, 2048, 2049)))
    policy = c.data(DIGEST[alg]) if rng.random() < 0.3 else b""
    index = rng.choice(NV_FREE) | (0x400000 if platform and rng.random() < 0.5 else 0)
    w = writer().b(c.data(rng.choice((0, 0, 8, 32, 65)))).sized(nv_public(index, attributes, size, alg, policy))
    return _frame(CC.NV_DefineSpace, [RH.PLATFORM if platform else c.pick(RH.OWNER, RH.OWNER, RH.ENDORSEMENT)], c.auth(), w)


@seed(CC.NV_UndefineSpace)
def _nv_undefine_space(c: SeedContext) -> Frame:
    return _frame(CC.NV_UndefineSpace, [c.pick(RH.OWNER, RH.OWNER, RH.PLATFORM), c.rng.choice(NV_FREE + NV_INDICES)],
                  c.auth())


@seed(CC.NV_UndefineSpaceSpecial)
def _nv_undefine_space_special(c: SeedContext) -> Frame:
    sessions = [AuthEntry(c.pick(c.ep.policy_session, c.ep.policy_session, RH.PW), b"", c.rng.choice((0, CONTINUE)))]
    frame = _frame(CC.NV_UndefineSpaceSpecial, [c.nv(NV_PLATFORM), RH.PLATFORM], sessions + c.auth())
    if sessions[0].handle == c.ep.policy_session and c.rng.random() < 0.3:
        frame.prelude = c.policy_prelude(CC.NV_UndefineSpaceSpecial)
    return frame


@seed(CC.NV_ReadPublic)
def _nv_read_public(c: SeedContext) -> Frame:
    return _frame(CC.NV_ReadPublic, [c.rng.choice(NV_INDICES + NV_FREE[:1])])


def _nv_auth(c: SeedContext, index: int) -> int:
    return c.pick(index, index, index, RH.OWNER, RH.PLATFORM)


def _nv_command(c: SeedContext, code: int, preferred: tuple[int, ...], params: Writer | None = None) -> Frame:
    index = c.nv(*preferred)
    prelude = []
    if index == NV_POLICY or (index == NV_PLATFORM and c.rng.random() < 0.3):
        sessions = [AuthEntry(c.pick(c.ep.policy_session, RH.PW), b"", CONTINUE)]
        if sessions[0].handle == c.ep.policy_session and c.rng.random() < 0.7:
            prelude = c.policy_prelude(code, branches=NV_POLICY_BRANCHES if index == NV_POLICY else None)
    else:
        sessions = c.auth()
    frame = _frame(code, [_nv_auth(c, index), index], sessions, params)
    frame.prelude = prelude
    return frame


@seed(CC.NV_Write)
def _nv_write(c: SeedContext) -> Frame:
    w = writer().b(c.data(c.rng.choice((1, 16, 32, 64, 0, 65, 1024)))).u16(c.rng.choice((0, 0, 1, 16, 63, 64, 65)))
    return _nv_command(c, CC.NV_Write, (NV_ORDINARY, NV_GLOBAL, NV_POLICY, NV_PLATFORM), w)


@seed(CC.NV_Increment)
def _nv_increment(c: SeedContext) -> Frame:
    return _nv_command(c, CC.NV_Increment, (NV_COUNTER,))


@seed(CC.NV_Extend)
def _nv_extend(c: SeedContext) -> Frame:
    return _nv_command(c, CC.NV_Extend, (NV_EXTEND,), writer().b(c.data()))


@seed(CC.NV_SetBits)
def _nv_set_bits(c: SeedContext) -> Frame:
    return _nv_command(c, CC.NV_SetBits, (NV_BITS,), writer().u64(c.rng.choice((1, 0, 1 << 63, 0xFFFFFFFFFFFFFFFF))))


@seed(CC.NV_WriteLock)
def _nv_write_lock(c: SeedContext) -> Frame:
    return _nv_command(c, CC.NV_WriteLock, (NV_ORDINARY, NV_GLOBAL))


@seed(CC.NV_GlobalWriteLock)
def _nv_global_write_lock(c: SeedContext) -> Frame:
    return _frame(CC.NV_GlobalWriteLock, [c.pick(RH.OWNER, RH.PLATFORM)], c.auth())


@seed(CC.NV_Read)
def _nv_read(c: SeedContext) -> Frame:
    w = writer().u16(c.rng.choice((8, 16, 32, 64, 0, 65, 1025))).u16(c.rng.choice((0, 0, 1, 8, 32, 64, 65)))
    return _nv_command(c, CC.NV_Read, NV_INDICES, w)


@seed(CC.NV_ReadLock)
def _nv_read_lock(c: SeedContext) -> Frame:
    return _nv_command(c, CC.NV_ReadLock, (NV_ORDINARY, NV_GLOBAL))


@seed(CC.NV_ChangeAuth)
def _nv_change_auth(c: SeedContext) -> Frame:
    sessions = [AuthEntry(c.pick(c.ep.policy_session, c.ep.policy_session, RH.PW, c.ep.hmac_session), b"", CONTINUE)]
    index = c.nv(NV_POLICY, NV_POLICY, NV_ORDINARY)
    frame = _frame(CC.NV_ChangeAuth, [index], sessions, writer().b(c.data(c.rng.choice((0, 16, 32, 33)))))
    if sessions[0].handle == c.ep.policy_session and c.rng.random() < 0.7:
        frame.prelude = c.policy_prelude(CC.NV_ChangeAuth, branches=NV_POLICY_BRANCHES if index == NV_POLICY else None)
    return frame


@seed(CC.NV_Certify)
def _nv_certify(c: SeedContext) -> Frame:
    index = c.nv(NV_ORDINARY, NV_COUNTER, NV_EXTEND)
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16)))))
    w.u16(c.rng.choice((8, 16, 32, 64, 0, 65))).u16(c.rng.choice((0, 0, 8, 64)))
    return _frame(CC.NV_Certify, [c.pick(c.signer(), RH.NULL), _nv_auth(c, index), index], c.auth(2), w)


# --- the chapters and commands added with libtpms' command set: 13 Rewrap, 14 ECC_Parameters and
# ZGen_2Phase, 18 the audit digests and CertifyX509, 19 ephemeral EC keys, 21 command audit,
# 23 PolicyPhysicalPresence/PolicyTemplate/PolicyAuthorizeNV, 26 PP_Commands and SetAlgorithmSet


def _curve(c: SeedContext) -> int:
    return c.rng.choice((ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521,
                         0, 0x0001, 0x0010, 0x0020, 0xFFFF))


def _point(c: SeedContext) -> Writer:
    x, y = c.art.signer_point
    if c.rng.random() < 0.2:
        y = bytes(max(len(y) - 1, 0)) + b"\x01"  # off the curve
    return writer().sized(writer().b(x).b(y))


def _command_list(c: SeedContext) -> Writer:
    codes = c.rng.sample(sorted(COMMANDS), c.rng.choice((0, 1, 2, 5)))
    if c.rng.random() < 0.2:
        codes.append(c.rng.choice((0, 0x1FF, CC.SetCommandCodeAuditStatus, CC.PP_Commands)))
    w = writer().count(len(codes))
    for code in codes:
        w.u32(code)
    return w


@seed(CC.Rewrap)
def _rewrap(c: SeedContext) -> Frame:
    w = writer().b(c.art.duplicate).b(c.art.child_name).b(c.art.duplicate_seed)
    return _frame(CC.Rewrap, [c.pick(PRIMARY, PRIMARY, RSA_KEY, RH.NULL), c.pick(PRIMARY, RSA_KEY, RH.NULL)],
                  c.auth(), w)


@seed(CC.ECC_Parameters)
def _ecc_parameters(c: SeedContext) -> Frame:
    return _frame(CC.ECC_Parameters, [], None, writer().u16(_curve(c)))


@seed(CC.EC_Ephemeral)
def _ec_ephemeral(c: SeedContext) -> Frame:
    return _frame(CC.EC_Ephemeral, [], None, writer().u16(_curve(c)))


@seed(CC.ZGen_2Phase)
def _zgen_2phase(c: SeedContext) -> Frame:
    w = writer().embed(_point(c)).embed(_point(c))
    w.u16(c.rng.choice((ALG.ECDH, ALG.ECDH, ALG.ECMQV, ALG.SM2, ALG.NULL, ALG.ECDSA))).u16(c.rng.choice((0, 1, 2, 0xFFFF)))
    return _frame(CC.ZGen_2Phase, [c.pick(c.ep.child, c.ep.child, PRIMARY, SIGNER)], c.auth(), w)


@seed(CC.Commit)
def _commit(c: SeedContext) -> Frame:
    w = writer().embed(_point(c) if c.rng.random() < 0.6 else writer().b(b""))
    w.b(c.data(c.rng.choice((0, 0, 16, 32)))).b(c.art.signer_point[1] if c.rng.random() < 0.5 else b"")
    return _frame(CC.Commit, [c.pick(SIGNER, SIGNER, c.ep.child, PRIMARY)], c.auth(), w)


def _audit_digest(c: SeedContext, code: int, handles: list[int]) -> Frame:
    w = _sign_scheme(c, writer().b(c.data(c.rng.choice((0, 16, 32)))))
    return _frame(code, handles, c.auth(2), w)


@seed(CC.GetSessionAuditDigest)
def _get_session_audit_digest(c: SeedContext) -> Frame:
    return _audit_digest(c, CC.GetSessionAuditDigest, [c.pick(RH.ENDORSEMENT, RH.ENDORSEMENT, RH.OWNER),
                                                       c.pick(c.signer(), RH.NULL),
                                                       c.pick(c.ep.hmac_session, c.ep.policy_session, 0x02000000)])


@seed(CC.GetCommandAuditDigest)
def _get_command_audit_digest(c: SeedContext) -> Frame:
    return _audit_digest(c, CC.GetCommandAuditDigest, [c.pick(RH.ENDORSEMENT, RH.ENDORSEMENT, RH.OWNER),
                                                       c.pick(c.signer(), RH.NULL)])


@seed(CC.CertifyX509)
def _certify_x509(c: SeedContext) -> Frame:
    w = _sign_scheme(c, writer().b(b"" if c.rng.random() < 0.8 else c.data(4)))
    partial = c.rng.choice((b"", bytes.fromhex("3000"), bytes.fromhex("300aa0030201023003020100"), c.data(64)))
    w.b(partial)
    return _frame(CC.CertifyX509, [c.pick(SIGNER, PRIMARY, c.ep.child), c.pick(c.signer(), RH.NULL)], c.auth(2), w)


@seed(CC.SetCommandCodeAuditStatus)
def _set_command_code_audit_status(c: SeedContext) -> Frame:
    w = writer().u16(c.hash_alg(null=True)).embed(_command_list(c)).embed(_command_list(c))
    return _frame(CC.SetCommandCodeAuditStatus, [c.pick(RH.OWNER, RH.OWNER, RH.PLATFORM)], c.auth(), w)


@seed(CC.PolicyPhysicalPresence)
def _policy_physical_presence(c: SeedContext) -> Frame:
    return _frame(CC.PolicyPhysicalPresence, [c.policy_session()])


@seed(CC.PolicyTemplate)
def _policy_template(c: SeedContext) -> Frame:
    return _frame(CC.PolicyTemplate, [c.policy_session()], None,
                  writer().b(c.data(c.rng.choice((32, 32, 20, 0, 64)))))


@seed(CC.PolicyAuthorizeNV)
def _policy_authorize_nv(c: SeedContext) -> Frame:
    index = c.nv(NV_ORDINARY, NV_POLICY)
    return _frame(CC.PolicyAuthorizeNV, [c.pick(index, index, RH.OWNER, RH.PLATFORM), index, c.policy_session()],
                  c.auth())


@seed(CC.PP_Commands)
def _pp_commands(c: SeedContext) -> Frame:
    w = writer().embed(_command_list(c)).embed(_command_list(c))
    return _frame(CC.PP_Commands, [c.pick(RH.PLATFORM, RH.PLATFORM, RH.OWNER)], c.auth(), w)


@seed(CC.SetAlgorithmSet)
def _set_algorithm_set(c: SeedContext) -> Frame:
    return _frame(CC.SetAlgorithmSet, [c.pick(RH.PLATFORM, RH.PLATFORM, RH.OWNER)], c.auth(),
                  writer().u32(c.rng.choice((0, 1, 0xFFFFFFFF))))
