"""The EK certificate validator against certificates it did not make: those swtpm_localca
issues for a swtpm manufactured by swtpm_setup, read back with tpm2-tools.

Inputs tried for rejection: a certificate without its intermediate, for another key,
without the EK EKU or with another EKU, past its validity or not yet valid, from an
untrusted issuer, from an issuer with the same name and another key, a revoked one
(and a forged CRL that must not count).
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import EkCertificateError, validate_ek_certificate
from certs.ek import TCG_KP_EK_CERTIFICATE, build_ek_certificate, tcg_san
from support.pki import NOW, load_pem_cert, make_ca
from support.servers import start_swtpm, swtpm_localca_setup_config
from support.tpm_helpers import HOST
from vmcrypt.vtpm_provision import IDENTITY


@pytest.fixture(scope="module")
def localca_swtpm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """swtpm manufactured by swtpm_setup with EK certificates from its own local CA."""
    base = tmp_path_factory.mktemp("localca")
    setup_conf = swtpm_localca_setup_config(base)
    state = base / "state"
    state.mkdir()
    result = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--create-ek-cert", "--ecc",
                             "--config", str(setup_conf)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    server = start_swtpm(state)
    try:
        env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host={HOST},port={server.port}"}
        files = {"root": base / "ca" / "swtpm-localca-rootca-cert.pem", "issuer": base / "ca" / "issuercert.pem"}
        for label, index, handle in (("rsa", "0x1c00002", "0x81010001"), ("ecc", "0x1c00016", "0x81010016")):
            der = base / f"{label}.der"
            subprocess.run(["tpm2_nvread", index, "-C", "o", "-o", str(der)], env=env, check=True, capture_output=True)
            subprocess.run(["tpm2_readpublic", "-c", handle, "-f", "pem", "-o", str(base / f"{label}-ek.pem")],
                           env=env, check=True, capture_output=True)
            files[label], files[f"{label}-ek"] = der, base / f"{label}-ek.pem"
    finally:
        server.stop()
    return files


def load_ek(path: Path):
    return serialization.load_pem_public_key(path.read_bytes())


def test_validator_accepts_swtpm_localca_certificates(localca_swtpm: dict[str, Path]) -> None:
    root, issuer = load_pem_cert(localca_swtpm["root"]), load_pem_cert(localca_swtpm["issuer"])
    for label in ("rsa", "ecc"):
        cert = x509.load_der_x509_certificate(localca_swtpm[label].read_bytes())
        info = validate_ek_certificate(cert, load_ek(localca_swtpm[f"{label}-ek"]), [root], intermediates=[issuer])
        assert info["tpm"]["model"] == "swtpm" and info["tpm"]["manufacturer"] == "id:00001014"
        assert info["chain"] == [issuer.subject.rfc4514_string(), root.subject.rfc4514_string()]
        # without the intermediate there is no path to the root
        with pytest.raises(EkCertificateError, match="no trusted issuer"):
            validate_ek_certificate(cert, load_ek(localca_swtpm[f"{label}-ek"]), [root])
    rsa_cert = x509.load_der_x509_certificate(localca_swtpm["rsa"].read_bytes())
    with pytest.raises(EkCertificateError, match="not the TPM's EK"):
        validate_ek_certificate(rsa_cert, load_ek(localca_swtpm["ecc-ek"]), [root], intermediates=[issuer])


def _test_ca() -> tuple[x509.Certificate, object]:
    return make_ca("Test EK CA")


def test_validator_rejections(localca_swtpm: dict[str, Path]) -> None:
    ca_cert, ca_key = _test_ca()
    ek = rsa.generate_private_key(65537, 2048).public_key()
    good = build_ek_certificate(ek, IDENTITY, ca_cert, ca_key, 1001)
    info = validate_ek_certificate(good, ek, [ca_cert])
    assert info["tpm"]["model"] == "vmcrypt-vtpm"

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(EkCertificateError, match="public key is not the TPM's EK"):
        validate_ek_certificate(good, other, [ca_cert])

    no_eku = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject).public_key(ek)
              .serial_number(1002).not_valid_before(NOW - datetime.timedelta(days=1))
              .not_valid_after(NOW + datetime.timedelta(days=30))
              .add_extension(tcg_san(IDENTITY), critical=True).sign(ca_key, hashes.SHA384()))
    with pytest.raises(EkCertificateError, match="no extended key usage"):
        validate_ek_certificate(no_eku, ek, [ca_cert])
    server_auth = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject).public_key(ek)
                   .serial_number(1003).not_valid_before(NOW - datetime.timedelta(days=1))
                   .not_valid_after(NOW + datetime.timedelta(days=30))
                   .add_extension(tcg_san(IDENTITY), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .sign(ca_key, hashes.SHA384()))
    with pytest.raises(EkCertificateError, match="does not include tcg-kp-EKCertificate"):
        validate_ek_certificate(server_auth, ek, [ca_cert])

    expired = build_ek_certificate(ek, IDENTITY, ca_cert, ca_key, 1004, not_before=NOW - datetime.timedelta(days=40),
                                   validity=datetime.timedelta(days=10))
    with pytest.raises(EkCertificateError, match="expired on"):
        validate_ek_certificate(expired, ek, [ca_cert])
    with pytest.raises(EkCertificateError, match="not valid before"):
        validate_ek_certificate(good, ek, [ca_cert], now=NOW - datetime.timedelta(days=2))

    untrusted_root = load_pem_cert(localca_swtpm["root"])
    with pytest.raises(EkCertificateError, match="no trusted issuer found for 'O=Example Corp,CN=Test EK CA'"):
        validate_ek_certificate(good, ek, [untrusted_root])
    # same issuer name, different key: the signature decides, not the name
    impostor, _ = make_ca("Test EK CA")
    with pytest.raises(EkCertificateError, match="no trusted issuer"):
        validate_ek_certificate(good, ek, [impostor])

    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(1001).revocation_date(NOW).build())
           .sign(ca_key, hashes.SHA384()))
    with pytest.raises(EkCertificateError, match="serial 3e9\\) was revoked"):
        validate_ek_certificate(good, ek, [ca_cert], crls=[crl])
    # a CRL not signed by the issuer is ignored
    forged_crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(NOW)
                  .next_update(NOW + datetime.timedelta(days=1))
                  .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(1001).revocation_date(NOW).build())
                  .sign(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()))
    assert validate_ek_certificate(good, ek, [ca_cert], crls=[forged_crl])["serial"] == "3e9"
    assert TCG_KP_EK_CERTIFICATE.dotted_string == "2.23.133.8.1"
