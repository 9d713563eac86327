"""Manufacturing a vTPM with EK certificates: ours next to swtpm_setup in the same run.

- ours: `vmcrypt.vtpm_provision.manufacture` in-process: fresh seeds, PCR_Allocate
  (SHA-1 + SHA-256), RSA-2048 and ECC P-256 EKs from the default templates, two
  certificates from the management CA written to NV, Shutdown(CLEAR), state
  serialized.
- reference: `swtpm_setup --tpm2 --create-ek-cert` with swtpm_localca (starts
  swtpm, creates and persists an RSA-2048 and an ECC P-384 EK, two certificates
  into NV, activates PCR banks), into a fresh state directory each round.

Both create the EKs from new seeds every round, so RSA key generation is part of
both figures. Ratio = median(ours) / median(swtpm_setup).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from vmcrypt.ca_keys import open_ca
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vtpm_provision import manufacture
from support.servers import swtpm_localca_setup_config

ROUNDS = 5


@pytest.fixture(scope="module")
def localca_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("swtpm_setup") is None:
        pytest.fail("swtpm_setup is not installed (Debian package swtpm-tools)", pytrace=False)
    return swtpm_localca_setup_config(tmp_path_factory.mktemp("localca"))


@pytest.mark.benchmark(group="manufacture vTPM + EK certificates")
def test_manufacture_ours(benchmark, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    ca = open_ca(home, KeyManager(ProviderRegistry(home)))
    ca.ensure()
    state, eks = benchmark.pedantic(lambda: manufacture(ca, "bench"), rounds=ROUNDS, iterations=1)
    assert len(eks) == 2 and len(state.to_bytes()) > 1000


@pytest.mark.benchmark(group="manufacture vTPM + EK certificates")
def test_manufacture_swtpm_setup(benchmark, tmp_path: Path, localca_config: Path) -> None:
    counter = itertools.count()

    def setup_one() -> None:
        state = tmp_path / f"state{next(counter)}"
        state.mkdir()
        done = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--create-ek-cert",
                               "--config", str(localca_config)], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    benchmark.pedantic(setup_one, rounds=ROUNDS, iterations=1)
