"""The low-range EK templates are the very keys tpm2_createek makes: on one served vTPM, the
EK the tool creates and our CreatePrimary of the template have the same public area.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.servers import start_vtpm
from support.tools import needs_tools
from support.tpm_helpers import TPM_RH_ENDORSEMENT, response_code
from support.tpm_key_helpers import create_primary, primary_public
from vtpm.ek import EK_TEMPLATES, POLICY_A_SHA256, EkKind, ek_template


@needs_tools("tpm2_createek")
def test_low_range_templates_match_tpm2_createek(tmp_path: Path) -> None:
    with start_vtpm(["--state", str(tmp_path / "s"), "--startup-clear"], tmp_path / "log") as server:
        for kind, tool_alg in ((EkKind.RSA2048, "rsa"), (EkKind.ECC_P256, "ecc")):
            subprocess.run(["tpm2_createek", "-c", f"{tool_alg}.ctx", "-G", tool_alg, "-u", f"{tool_alg}.pub"],
                           env=server.tools_env(), cwd=tmp_path, check=True, capture_output=True)
            subprocess.run(["tpm2_flushcontext", "-t"], env=server.tools_env(), cwd=tmp_path, capture_output=True)
            tools_public = (tmp_path / f"{tool_alg}.pub").read_bytes()[2:]
            conn = server.connect()
            try:
                response = conn.transact(create_primary(ek_template(kind).template, TPM_RH_ENDORSEMENT))
            finally:
                conn.close()
            assert response_code(response) == 0
            assert primary_public(response)[2:] == tools_public
            assert POLICY_A_SHA256 in tools_public
    assert len(EK_TEMPLATES) == 6
