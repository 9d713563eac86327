"""Regression tests for what the real clients' own suites found (benchmarks/client_suites.py runs
tpm2-pytss 3.0.0's test/ and tpm2-tools 5.4's test/integration against swtpm and the vTPM), each
step run with the real `tpm2` tool against our vTPM and against swtpm.

- tpm2-pytss test_fapi.py test_get_tpm_blobs (ECC and RSA): a created key's TPM2B_PRIVATE was 50
  bytes shorter than libtpms's (no IV, authValue not padded to the nameAlg digest size).
- tpm2-tools testparms.sh: `tpm2 testparms ecc:ecdaa` answered TPM_RC_CURVE (TestParms read the
  ECDAA scheme's count as the curve).
- tpm2-pytss test_cryptography.py test_ecc_unsupported_curve, tpm2-tools testparms.sh: the BN and
  SM2 curves (tests/interop/test_vtpm_ecc_curves.py covers them command by command).
"""

from __future__ import annotations

import pytest
from support.peers import Pair, tools_installed

pytestmark = pytest.mark.skipif(not tools_installed(), reason="tpm2-tools are not installed")


@pytest.mark.parametrize("alg", ["ecc", "rsa", "keyedhash"])
def test_created_private_blobs_are_as_long_as_swtpms(pair: Pair, alg: str) -> None:
    sizes = []
    for peer, cwd in zip((pair.ours, pair.ref), pair.dirs()):
        peer.tool("createprimary", "-Q", "-C", "o", "-c", "primary.ctx", cwd=cwd)
        for auth in ("", "secret"):
            peer.tool("create", "-Q", "-C", "primary.ctx", "-G", alg, "-p", auth, "-u", f"{auth}.pub",
                      "-r", f"{auth}.priv", cwd=cwd)
            peer.tool("load", "-Q", "-C", "primary.ctx", "-u", f"{auth}.pub", "-r", f"{auth}.priv",
                      "-c", f"{auth}.ctx", cwd=cwd)
        sizes.append([(cwd / f"{auth}.priv").stat().st_size for auth in ("", "secret")])
    assert sizes[0] == sizes[1]


def test_testparms_takes_every_ecc_signing_scheme(pair: Pair) -> None:
    for peer, cwd in zip((pair.ours, pair.ref), pair.dirs()):
        for spec in ("ecc:ecdsa", "ecc:ecdaa", "ecc:sm2", "ecc:ecschnorr", "ecc_sm2:sm2", "ecc192:ecdsa"):
            peer.tool("testparms", spec, cwd=cwd)
