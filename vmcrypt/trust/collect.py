"""Evidence collection on a booted host: its identity (EK certificate, AK) and its answer to a challenge.

The attestation key is a primary object in the endorsement hierarchy (derived from the
endorsement seed: the same AK on every boot, so a host's identity can be exported once):
RSA 2048, RSASSA-SHA256, ``fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth |
restricted | sign``. A restricted signing key signs only what the TPM itself produced (a
quote), never an outside digest that could look like one.

``answer`` proves three things in one report: the AK lives in the TPM whose EK was
certified (TPM2_ActivateCredential of the service's credential, the EK's PolicySecret
satisfied in a policy session), the PCRs (TPM2_Quote over the service's nonce), and what
produced them (the boot event log and the IMA list).
"""

from __future__ import annotations

from collections.abc import Iterable

from vmcrypt.trust.evidence import AttestationReport, Challenge
from vmcrypt.trust.host_boot import BootedHost
from vtpm import wire
from vtpm.client import TpmCommandError
from vtpm.constants import ALG, CC, RH, TPMA_OBJECT
from vtpm.ek import EkKind, ek_template
from vtpm.marshal.objects import TPMT_PUBLIC

A = TPMA_OBJECT
AK_ATTRIBUTES = (A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.USER_WITH_AUTH | A.RESTRICTED
                 | A.SIGN_ENCRYPT)
QUOTE_PCRS = tuple(range(11))  # 0-7 firmware and Secure Boot, 8-9 the static OS (kernel, VIBs), 10 IMA
QUOTE_BANKS = (ALG.SHA256,)
TPM_SE_POLICY = 0x01
_NO_CONTINUE = 0  # the policy session is flushed after ActivateCredential


class CollectionError(Exception):
    """The host's TPM refused a step of evidence collection; the message names the step."""


def ak_template() -> bytes:
    """TPMT_PUBLIC of the attestation key (see the module docstring)."""
    return TPMT_PUBLIC.build({
        "type": ALG.RSA, "nameAlg": ALG.SHA256, "objectAttributes": int(AK_ATTRIBUTES), "authPolicy": b"",
        "parameters": {"symmetric": {"algorithm": ALG.NULL, "keyBits": None, "mode": None},
                       "scheme": {"scheme": ALG.RSASSA, "details": {"hashAlg": ALG.SHA256}},
                       "keyBits": 2048, "exponent": 0},
        "unique": bytes(256),
    })


def _tpm2b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _take_tpm2b(data: bytes, offset: int) -> tuple[bytes, int]:
    size = int.from_bytes(data[offset:offset + 2], "big")
    return data[offset + 2:offset + 2 + size], offset + 2 + size


class HostEvidence:
    """The evidence side of one booted host, driving its TPM in-process."""

    def __init__(self, booted_host: BootedHost, ek_kind: EkKind = EkKind.RSA2048) -> None:
        self.host = booted_host
        self.client = booted_host.client
        self.ek_kind = EkKind(ek_kind)
        if self.ek_kind not in booted_host.ek_certificates:
            raise CollectionError(f"the host's TPM has no {self.ek_kind.value} EK certificate")
        handle, public = self._load_ak()
        self.client.flush(handle)
        self.ak_public = _tpm2b(public)  # TPM2B_PUBLIC, as the service receives it

    def _load_ak(self) -> tuple[int, bytes]:
        """The AK, loaded for one operation (the same key every time: a primary of the endorsement
        seed); the caller flushes it, so no TPM object slot stays taken between attestations."""
        try:
            return self.client.create_primary(RH.ENDORSEMENT, ak_template())
        except TpmCommandError as exc:
            raise CollectionError(f"creating the attestation key: {exc}") from None

    def identity(self) -> tuple[bytes, bytes]:
        """(EK certificate DER, AK TPM2B_PUBLIC): what TrustedAdmins import for this host."""
        return self.host.ek_certificates[self.ek_kind], self.ak_public

    def activate(self, challenge: Challenge) -> bytes:
        """TPM2_ActivateCredential of the challenge's credential with the AK and the EK."""
        blobs = _tpm2b_exact(challenge.credential_blob) + _tpm2b_exact(challenge.encrypted_secret)
        ak_handle, _ = self._load_ak()
        ek_handle, _ = self.client.create_primary(RH.ENDORSEMENT, ek_template(self.ek_kind).template)
        session = None
        try:
            session = self._endorsement_policy_session()
            command = wire.build_command(CC.ActivateCredential, [ak_handle, ek_handle], blobs,
                                         [wire.password_session(), wire.auth_entry(session, attributes=_NO_CONTINUE)])
            params = self.client.call(command, "ActivateCredential").parameters()
            session = None  # used without continueSession: the TPM flushed it
            return _take_tpm2b(params, 0)[0]
        except TpmCommandError as exc:
            raise CollectionError(f"activating the credential: {exc}") from None
        finally:
            for handle in (session, ek_handle, ak_handle):
                if handle is not None:
                    self.client.flush(handle)

    def _endorsement_policy_session(self) -> int:
        """A policy session satisfying the EK's PolicyA: PolicySecret(TPM_RH_ENDORSEMENT)."""
        start = wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL],
                                   _tpm2b(self.client.get_random(16)) + _tpm2b(b"") + bytes([TPM_SE_POLICY])
                                   + ALG.NULL.to_bytes(2, "big") + ALG.SHA256.to_bytes(2, "big"))
        (session,), _, _ = self.client.call(start, "StartAuthSession").split(1)
        secret = wire.build_command(CC.PolicySecret, [RH.ENDORSEMENT, session],
                                    _tpm2b(b"") + _tpm2b(b"") + _tpm2b(b"") + bytes(4), wire.password_session())
        self.client.call(secret, "PolicySecret")
        return session

    def quote(self, nonce: bytes, pcrs: Iterable[int] = QUOTE_PCRS,
              banks: Iterable[int] = QUOTE_BANKS) -> tuple[bytes, bytes, dict[int, dict[int, bytes]]]:
        """(TPM2B_ATTEST, TPMT_SIGNATURE, PCR values) of a quote over ``nonce`` with the AK's own scheme."""
        pcr_list = tuple(pcrs)
        selection = [(bank, pcr_list) for bank in banks]
        ak_handle, _ = self._load_ak()
        command = wire.build_command(CC.Quote, [ak_handle],
                                     _tpm2b(nonce) + ALG.NULL.to_bytes(2, "big") + wire.pcr_selection(selection),
                                     wire.password_session())
        try:
            params = self.client.call(command, "Quote").parameters()
        except TpmCommandError as exc:
            raise CollectionError(f"quoting: {exc}") from None
        finally:
            self.client.flush(ak_handle)
        attest, offset = _take_tpm2b(params, 0)
        return _tpm2b(attest), params[offset:], self.client.pcr_read(selection)

    def answer(self, challenge: Challenge, *, host: str, version: str,
               banks: Iterable[int] = QUOTE_BANKS) -> AttestationReport:
        """The report for ``challenge``: activated secret, quote over its nonce, PCR values, both logs."""
        secret = self.activate(challenge)
        attest, signature, values = self.quote(challenge.nonce, banks=banks)
        ek_certificate, ak_public = self.identity()
        return AttestationReport(host=host, version=version, ek_certificate=ek_certificate, ak_public=ak_public,
                                 activated_secret=secret, nonce=challenge.nonce, quote=attest, signature=signature,
                                 pcr_values=values, event_log=self.host.event_log, ima_log=self.host.ima_log)


def _tpm2b_exact(data: bytes) -> bytes:
    """A TPM2B as the challenge carries it (size included); checked so a bad challenge fails here."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise CollectionError("the challenge's credential is not a well-formed TPM2B")
    return data
