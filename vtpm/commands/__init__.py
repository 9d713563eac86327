"""The commands, one module per chapter of TPM 2.0 Library Part 3 (Commands).

Importing this package registers every handler with ``vtpm.core.COMMANDS``.
A command module imports only from the layers below it (``vtpm.core``,
``vtpm.entities``, and the crypto, marshalling, object, key, session, state,
constant and error modules), never another command module; within the
Enhanced Authorization package, ``vtpm.commands.ea``, the submodules share
``vtpm.commands.ea.common``.
"""

from vtpm.commands import (  # noqa: F401  (each chapter registers its handlers on import)
    asymmetric,
    attestation,
    audit,
    capability,
    clock,
    context,
    dictionary_attack,
    duplication,
    ea,
    ephemeral,
    hierarchy,
    management,
    nv,
    object,
    pcr,
    random,
    sequences,
    session,
    signing,
    startup,
    symmetric,
    testing,
)

# Module name -> (chapter of Part 3, the chapter's title).
CHAPTERS: dict[str, tuple[int, str]] = {
    "startup": (9, "Start-up"),
    "testing": (10, "Testing"),
    "session": (11, "Session Commands"),
    "object": (12, "Object Commands"),
    "duplication": (13, "Duplication Commands"),
    "asymmetric": (14, "Asymmetric Primitives"),
    "symmetric": (15, "Symmetric Primitives"),
    "random": (16, "Random Number Generator"),
    "sequences": (17, "Hash/HMAC/Event Sequences"),
    "attestation": (18, "Attestation Commands"),
    "ephemeral": (19, "Ephemeral EC Keys"),
    "signing": (20, "Signing and Signature Verification"),
    "audit": (21, "Command Audit"),
    "pcr": (22, "Integrity Collection (PCR)"),
    "ea": (23, "Enhanced Authorization (EA) Commands"),
    "hierarchy": (24, "Hierarchy Commands"),
    "dictionary_attack": (25, "Dictionary Attack Functions"),
    "management": (26, "Miscellaneous Management Functions"),
    "context": (28, "Context Management"),
    "clock": (29, "Clocks and Timers"),
    "capability": (30, "Capability Commands"),
    "nv": (31, "Non-volatile Storage"),
}
