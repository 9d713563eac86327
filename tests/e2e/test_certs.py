"""EK certificates: issued by the management CA at vTPM creation, read back by real clients.

Checked with tools other than ours: tpm2_nvread/tpm2_createek over the vTPM's socket,
`openssl x509`/`openssl verify` on what they return. (The validator against the
certificates swtpm_localca issues for swtpm: interop/test_ek_validator.py.)

Inputs tried for rejection: a CA import with a key that does not match or a chain in
the wrong order, a signed CSR answer for another key, a revoked certificate, a vTPM
for BIOS firmware, for hardware version 13, a second vTPM.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certs import validate_ek_certificate
from support.files import snapshot
from support.pki import NOW, load_pem_cert, make_ca, pem
from support.servers import start_vtpm
from support.tools import tools
from vmcrypt.ca_keys import open_ca
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vtpm_provision import IDENTITY

RSA_CERT_INDEX, ECC_CERT_INDEX = "0x01c00002", "0x01c0000a"


# ----------------------------------------------------------------------------- helpers


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result


def read_ek_certs(vm: Path, home: Path, workdir: Path) -> dict[str, Path]:
    """Serve the VM's vTPM and read both EK certificates and both EKs with tpm2-tools."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["VMCRYPT_HOME"] = str(home)
    out: dict[str, Path] = {}
    try:
        with start_vtpm(["--vm", str(next(vm.glob("*.vmx"))), "--startup-clear"], workdir / "serve.log") as tpm:
            for label, index, alg in (("rsa", RSA_CERT_INDEX, "rsa"), ("ecc", ECC_CERT_INDEX, "ecc")):
                der = workdir / f"{label}.der"
                tools(tpm, "tpm2_nvread", index, "-o", str(der))
                openssl("x509", "-inform", "DER", "-in", str(der), "-out", str(workdir / f"{label}.pem"))
                tools(tpm, "tpm2_createek", "-c", str(workdir / f"{label}.ctx"), "-G", alg,
                      "-u", str(workdir / f"{label}-ek.pub"), "-f", "pem")
                out[label] = workdir / f"{label}.pem"
                out[f"{label}-ek"] = workdir / f"{label}-ek.pub"
    finally:
        os.environ.pop("VMCRYPT_HOME", None)
    return out


def cert_pubkey(cert_pem: Path) -> str:
    return openssl("x509", "-in", str(cert_pem), "-pubkey", "-noout").stdout


@pytest.fixture
def vm_with_vtpm(tmp_path: Path, vmcrypt_cli) -> Path:
    vm = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    result = vmcrypt_cli("vtpm", "add", str(vm), check=True)
    assert "0x01c00002" in result.stdout and "0x01c0000a" in result.stdout
    return vm


def ca_files(vmcrypt_cli, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    root, chain = directory / "root.pem", directory / "chain.pem"
    vmcrypt_cli("ca", "export-root", "--out", str(root), check=True)
    vmcrypt_cli("ca", "export-root", "--chain", "--out", str(chain), check=True)
    return root, chain


# ----------------------------------------------------------------------------- our certificates


def test_ek_certificates_read_by_real_clients(tmp_path: Path, home: Path, vm_with_vtpm: Path, vmcrypt_cli) -> None:
    root, chain = ca_files(vmcrypt_cli, tmp_path)
    got = read_ek_certs(vm_with_vtpm, home, tmp_path / "read")
    for label, key_usage in (("rsa", "Key Encipherment"), ("ecc", "Key Agreement")):
        text = openssl("x509", "-in", str(got[label]), "-text", "-noout").stdout
        assert "Subject Alternative Name: critical" in text
        assert "2.23.133.2.1=id:564D4352" in text and "2.23.133.2.2=vmcrypt-vtpm" in text and "2.23.133.2.3=id:" in text
        assert "Extended Key Usage" in text and "2.23.133.8.1" in text
        assert "CA:FALSE" in text and key_usage in text and "Authority Key Identifier" in text
        assert "Subject: \n" in text or "Subject:\n" in text  # empty subject, as the profile asks
        assert "Subject Directory Attributes" in text
        # the chain verifies with openssl, against the root alone and the exported chain
        assert "OK" in openssl("verify", "-CAfile", str(root), str(got[label])).stdout
        assert "OK" in openssl("verify", "-CAfile", str(chain), str(got[label])).stdout
        # the certified key is the EK the TPM recreates from its seed
        assert cert_pubkey(got[label]) == Path(got[f"{label}-ek"]).read_text()
    assert "OK" in vmcrypt_cli("ca", "verify-ek", str(vm_with_vtpm), check=True).stdout


def test_ek_nv_indices_are_platform_owned(tmp_path: Path, home: Path, vm_with_vtpm: Path) -> None:
    os.environ["VMCRYPT_HOME"] = str(home)
    try:
        with start_vtpm(["--vm", str(vm_with_vtpm / "vm1.vmx"), "--startup-clear"], tmp_path / "log") as tpm:
            public = tools(tpm, "tpm2_nvreadpublic", RSA_CERT_INDEX).stdout
            assert "platformcreate" in public and "ppwrite" in public and "ownerwrite" not in public
            # the owner can neither delete nor overwrite the certificate
            assert tools(tpm, "tpm2_nvundefine", RSA_CERT_INDEX, "-C", "o", check=False).returncode != 0
            assert tools(tpm, "tpm2_nvwrite", RSA_CERT_INDEX, "-C", "o", "-i", "-", stdin=b"x", check=False).returncode != 0
    finally:
        os.environ.pop("VMCRYPT_HOME", None)


# ----------------------------------------------------------------------------- third-party CA


@pytest.mark.slow
def test_third_party_ca_and_reissue(tmp_path: Path, home: Path, vm_with_vtpm: Path, vmcrypt_cli) -> None:
    old_root, _ = ca_files(vmcrypt_cli, tmp_path / "old")
    gone = tmp_path / "ds" / "gone"  # a VM that got a vTPM and was deleted since
    vmcrypt_cli("vm", "create", str(gone), check=True)
    vmcrypt_cli("vtpm", "add", str(gone), check=True)
    shutil.rmtree(gone)
    before = read_ek_certs(vm_with_vtpm, home, tmp_path / "before")

    corp_root, corp_root_key = make_ca("Corp Root CA", key=rsa.generate_private_key(65537, 3072))
    corp_issuing, corp_issuing_key = make_ca("Corp vTPM CA", issuer=(corp_root, corp_root_key), path_length=0)
    (tmp_path / "corp-chain.pem").write_bytes(pem(corp_issuing, corp_root))
    (tmp_path / "corp-root.pem").write_bytes(pem(corp_root))
    (tmp_path / "corp-issuing.pem").write_bytes(pem(corp_issuing))
    (tmp_path / "pw").write_text("corp secret\n")
    (tmp_path / "corp-key.pem").write_bytes(corp_issuing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"corp secret")))
    # a key that does not belong to the certificate is refused and changes nothing
    (tmp_path / "wrong-key.pem").write_bytes(corp_root_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    refused = vmcrypt_cli("ca", "import", "--cert", str(tmp_path / "corp-chain.pem"), "--key", str(tmp_path / "wrong-key.pem"))
    assert refused.returncode != 0 and "does not belong to the first certificate" in refused.stderr
    (tmp_path / "reversed.pem").write_bytes(pem(corp_root, corp_issuing))
    refused = vmcrypt_cli("ca", "import", "--cert", str(tmp_path / "reversed.pem"), "--key", str(tmp_path / "wrong-key.pem"))
    assert refused.returncode != 0 and "issuing certificate first" in refused.stderr
    assert "vmcrypt VMCA" in vmcrypt_cli("ca", "show", check=True).stdout

    vmcrypt_cli("ca", "import", "--cert", str(tmp_path / "corp-chain.pem"), "--key", str(tmp_path / "corp-key.pem"),
                "--password-file", str(tmp_path / "pw"), check=True)
    assert "Corp vTPM CA" in vmcrypt_cli("ca", "show", check=True).stdout
    # existing vTPMs keep their old certificates until reissued
    assert "INVALID" in vmcrypt_cli("ca", "verify-ek", str(vm_with_vtpm)).stdout
    both = vmcrypt_cli("ca", "reissue-ek", str(vm_with_vtpm), "--all")
    assert both.returncode != 0 and "not both" in both.stderr
    reissued = vmcrypt_cli("ca", "reissue-ek", "--all", check=True)
    assert reissued.stdout.count("Corp vTPM CA") == 2 and "vm1: EK rsa2048" in reissued.stdout
    assert f"{gone / 'gone.vmx'}: skipped (no longer there)" in reissued.stdout
    after = read_ek_certs(vm_with_vtpm, home, tmp_path / "after")

    for label in ("rsa", "ecc"):
        new_ok = openssl("verify", "-CAfile", str(tmp_path / "corp-root.pem"), "-untrusted", str(tmp_path / "corp-issuing.pem"),
                         str(after[label]))
        assert new_ok.returncode == 0 and "OK" in new_ok.stdout
        assert openssl("verify", "-CAfile", str(old_root), str(after[label]), check=False).returncode != 0
        assert openssl("verify", "-CAfile", str(tmp_path / "corp-root.pem"), "-untrusted", str(tmp_path / "corp-issuing.pem"),
                       str(before[label]), check=False).returncode != 0
        # the EK itself did not change
        assert cert_pubkey(after[label]) == cert_pubkey(before[label]) == before[f"{label}-ek"].read_text()
        assert after[f"{label}-ek"].read_text() == before[f"{label}-ek"].read_text()
    assert vmcrypt_cli("ca", "verify-ek", str(vm_with_vtpm)).stdout.count("OK") == 2

    # new vTPMs get certificates from the new chain
    vm2 = tmp_path / "ds" / "vm2"
    vmcrypt_cli("vm", "create", str(vm2), check=True)
    vmcrypt_cli("vtpm", "add", str(vm2), check=True)
    fresh = read_ek_certs(vm2, home, tmp_path / "vm2")
    assert openssl("verify", "-CAfile", str(tmp_path / "corp-root.pem"), "-untrusted", str(tmp_path / "corp-issuing.pem"),
                   str(fresh["ecc"])).returncode == 0
    assert_no_clear_private_key(home, corp_issuing_key)


@pytest.mark.slow
def test_subordinate_ca_from_csr_and_pkcs12(tmp_path: Path, home: Path, vmcrypt_cli) -> None:
    corp_root, corp_root_key = make_ca("Corp Root CA")
    vmcrypt_cli("ca", "csr", "--cn", "vmcrypt subordinate", "--out", str(tmp_path / "sub.csr"), check=True)
    csr = x509.load_pem_x509_csr((tmp_path / "sub.csr").read_bytes())
    assert csr.is_signature_valid and csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vmcrypt subordinate"
    # an answer for some other key is refused
    stranger, _ = make_ca("vmcrypt subordinate", issuer=(corp_root, corp_root_key), path_length=0)
    (tmp_path / "wrong.pem").write_bytes(pem(stranger, corp_root))
    refused = vmcrypt_cli("ca", "import-signed", "--chain", str(tmp_path / "wrong.pem"))
    assert refused.returncode != 0 and "not for the key of the pending CSR" in refused.stderr

    signed = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(corp_root.subject).public_key(csr.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(hours=1))
              .not_valid_after(NOW + datetime.timedelta(days=1000))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                           encipher_only=False, decipher_only=False), critical=True)
              .sign(corp_root_key, hashes.SHA384()))
    (tmp_path / "signed.pem").write_bytes(pem(signed, corp_root))
    (tmp_path / "root.pem").write_bytes(pem(corp_root))
    (tmp_path / "sub.pem").write_bytes(pem(signed))
    vmcrypt_cli("ca", "import-signed", "--chain", str(tmp_path / "signed.pem"), check=True)
    vm = tmp_path / "ds" / "vm3"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    vmcrypt_cli("vtpm", "add", str(vm), check=True)
    got = read_ek_certs(vm, home, tmp_path / "read")
    assert openssl("verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "sub.pem"),
                   str(got["rsa"])).returncode == 0
    exported = vmcrypt_cli("ca", "export-root", check=True).stdout
    assert exported.encode() == pem(corp_root)

    # a PKCS#12 bundle replaces it again
    p12_root, p12_key = make_ca("P12 CA", key=rsa.generate_private_key(65537, 3072))
    bundle = pkcs12.serialize_key_and_certificates(b"p12", p12_key, p12_root, None,
                                                    serialization.BestAvailableEncryption(b"bundle pw"))
    (tmp_path / "ca.p12").write_bytes(bundle)
    (tmp_path / "pw").write_text("bundle pw")
    vmcrypt_cli("ca", "import", "--cert", str(tmp_path / "ca.p12"), "--password-file", str(tmp_path / "pw"), check=True)
    vmcrypt_cli("ca", "reissue-ek", str(vm), check=True)
    assert vmcrypt_cli("ca", "verify-ek", str(vm), check=True).stdout.count("OK") == 2
    assert_no_clear_private_key(home, p12_key)


# ----------------------------------------------------------------------------- revocation and keys at rest


@pytest.mark.slow
def test_revocation_and_crl(tmp_path: Path, home: Path, vm_with_vtpm: Path, vmcrypt_cli) -> None:
    root, _ = ca_files(vmcrypt_cli, tmp_path)
    got = read_ek_certs(vm_with_vtpm, home, tmp_path / "read")
    serial = load_pem_cert(got["rsa"]).serial_number
    refused = vmcrypt_cli("ca", "revoke", "123456")
    assert refused.returncode != 0 and "no certificate with serial 123456" in refused.stderr
    vmcrypt_cli("ca", "revoke", f"{serial:x}", check=True)
    vmcrypt_cli("ca", "crl", "--out", str(tmp_path / "crl.pem"), check=True)
    revoked = openssl("verify", "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"), "-CAfile", str(root), str(got["rsa"]),
                      check=False)
    assert revoked.returncode != 0 and "revoked" in (revoked.stdout + revoked.stderr)
    assert openssl("verify", "-crl_check", "-CRLfile", str(tmp_path / "crl.pem"), "-CAfile", str(root),
                   str(got["ecc"])).returncode == 0
    verdict = vmcrypt_cli("ca", "verify-ek", str(vm_with_vtpm))
    assert verdict.returncode != 0 and "was revoked" in verdict.stdout and "ecc-p256  0x01c0000a  OK" in verdict.stdout
    # reissuing supersedes: the new certificate is good, the old serial stays revoked
    vmcrypt_cli("ca", "reissue-ek", str(vm_with_vtpm), check=True)
    assert vmcrypt_cli("ca", "verify-ek", str(vm_with_vtpm), check=True).stdout.count("OK") == 2
    assert '"revoked": 2' in vmcrypt_cli("ca", "show", "--json", check=True).stdout


def assert_no_clear_private_key(home: Path, key) -> None:
    forms = [
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()),
    ]
    numbers = key.private_numbers()
    secret = numbers.private_value if isinstance(key, ec.EllipticCurvePrivateKey) else numbers.d
    forms.append(secret.to_bytes((secret.bit_length() + 7) // 8, "big"))
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data or b"ENCRYPTED PRIVATE KEY" in data, path
        for form in forms:
            assert form not in data, f"{path} holds the CA key in clear"


def test_ca_private_key_never_in_clear(home: Path, vm_with_vtpm: Path) -> None:
    ca = open_ca(home, KeyManager(ProviderRegistry(home)))
    key = ca._private_key()  # only reachable through the key provider
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    assert_no_clear_private_key(home, key)
    assert_no_clear_private_key(vm_with_vtpm, key)
    assert (ca.key_path.stat().st_mode & 0o777) == 0o600


@pytest.mark.slow
def test_vtpm_add_refusals(tmp_path: Path, vm_with_vtpm: Path, vmcrypt_cli) -> None:
    """BIOS firmware, hardware version 13, a second vTPM: refused, and the VM is left as it was."""
    for name, extra, reason in (("bios", ["--firmware", "bios"], "needs EFI firmware"),
                                ("old", ["--hw-version", "13"], "virtual hardware version 14 or later")):
        vm = tmp_path / "ds" / name
        vmcrypt_cli("vm", "create", str(vm), *extra, check=True)
        before = snapshot(vm)
        result = vmcrypt_cli("vtpm", "add", str(vm))
        assert result.returncode != 0 and reason in result.stderr
        assert snapshot(vm) == before
    before = snapshot(vm_with_vtpm)
    again = vmcrypt_cli("vtpm", "add", str(vm_with_vtpm))
    assert again.returncode != 0 and "already has a vTPM" in again.stderr
    assert snapshot(vm_with_vtpm) == before


def test_failed_ca_switch_keeps_the_old_ca(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fails while the new chain is written: the old CA still issues, with its own key."""
    import certs.ca as ca_module

    ca = open_ca(home, KeyManager(ProviderRegistry(home)))
    old = ca.certificate
    new_cert, new_key = make_ca("Replacement CA")

    def failing_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ca_module, "write_atomic", failing_write)
    with pytest.raises(OSError):
        ca.import_ca([new_cert], new_key)
    monkeypatch.undo()
    assert ca.certificate == old
    ek = ec.generate_private_key(ec.SECP256R1()).public_key()
    cert = ca.issue_ek(ek, IDENTITY, "after a failed switch")
    assert validate_ek_certificate(cert, ek, [old])["chain"] == [old.subject.rfc4514_string()]
    ca.import_ca([new_cert], new_key)
    assert ca.certificate == new_cert and len(list((home / "ca").glob("ca-key-*.vmc"))) == 1
