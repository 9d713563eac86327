"""Fuzzing the vTPM and the VM-encryption file formats (scripts/fuzz.py, tests/*/test_fuzz_*.py).

- ``frames``: TPM command frames that remember where their fields are, the
  mutations that lie about those fields, and the response checker;
- ``seeds``: a prepared TPM (keys, sessions, NV indices, a sequence, tickets)
  and one valid-looking seed per implemented command;
- ``tpm``: the in-process campaign against ``Tpm.execute`` and its report;
- ``tcp``: the same commands, garbage framing and disconnects against a
  served vTPM;
- ``files``: mutated ``.nvram``, containers, key safes, journals, backup
  manifests and archives, ``providers.json`` and vTPM state through the
  readers that open them.

``frames``, ``seeds``, ``tpm`` and ``tcp`` use ``vtpm`` only; ``files`` uses vmcrypt.
"""
