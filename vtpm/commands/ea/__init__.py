"""Enhanced Authorization (Part 3, section 23; Part 1, 19.7): the policy assertions,
each of which extends a policy session.

Every assertion folds itself into the session's digest,
policyDigest_new = H(policyDigest_old || TPM_CC || arguments), so an entity's
authPolicy names the exact list of assertions that unlocks it. A policy session
also records what each assertion requires of the command it will authorize
(command code, locality, cpHash, PCR counter, ...); vtpm.authorization checks
those when the session is used. A trial session only computes the digest:
checks that need real state (PCR values, NV contents, time) are skipped.

The assertions are split by topic: ``assertions`` (the simple ones), ``conditions``
(PCR, NV and time), ``secret`` (PolicySecret) and ``signed`` (PolicySigned,
PolicyTicket, PolicyAuthorize); ``common`` holds what they share.
"""

from vtpm.commands.ea import assertions, conditions, secret, signed

__all__ = ["assertions", "conditions", "secret", "signed"]
