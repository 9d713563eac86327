"""Trust Authority: measured boot of hosts, remote attestation and the trusted key provider.

The pieces, each in its own module:

- ``evidence``: what a host sends (``AttestationReport``), what the attestation service sends
  first (``Challenge``) and what it answers (``Verdict``). Plain dataclasses with a JSON form.
- measured boot of an ESXi-like host into its own TPM, the image manifests, the verifier and
  the trust policy; the HTTPS services (attestation, key provider), the host agent and the
  ``trusted`` key provider of the management plane.

The services side: ``token`` (ES256 attestation tokens), ``pki`` (the Trust Authority's TLS CA),
``authority`` (its home, configuration by TrustedAdmins, audit chain), ``services`` and ``serving``
(the attestation and key provider services over mutual TLS), ``agent`` (the host agent),
``workload`` (the workload cluster's export, import and attested-host rule), ``placement`` (the
management plane's rule for VMs on a ``trusted`` provider, ``vmcrypt.providers.trusted``),
``trust_policy`` (configuration to ``TrustPolicy``), ``host_identity`` and ``demo``.

TPM-generic pieces (the TCG crypto-agile event log, the IMA log, quote parsing) live in
``vtpm/``; this package knows about hosts, images and keys.
"""
