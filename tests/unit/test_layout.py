"""The layout of the code: which module may import which.

The vTPM is layered like the TPM 2.0 specification: ``vtpm.core`` (the engine's
shared types and registries) at the bottom of the command layer, the TPM's
entities (``vtpm.entities``) above it, one command module per chapter of
TPM 2.0 Library Part 3 (``vtpm.commands``) above those, and the engine
(``vtpm.engine``) on top. Imports only point down: there are no import cycles,
and no command module imports another.

The import graph is read from the source (the AST), so an import hidden inside
a function counts as much as one at the top of a module; only imports under
``if TYPE_CHECKING:`` (type hints, never run) are left out.
"""

from __future__ import annotations

from pathlib import Path

import vtpm.engine  # noqa: F401  (registers every command handler)
from vtpm.commands import CHAPTERS
from vtpm.constants import CC
from vtpm.core import COMMANDS

from support.imports import find_cycles, import_graph, module_files, within
COMMANDS_PACKAGE = "vtpm.commands"
EA_PACKAGE = "vtpm.commands.ea"
EA_HELPERS = "vtpm.commands.ea.common"

# Every implemented command (TPM_CC name) and its chapter of TPM 2.0 Library Part 3.
PART3_CHAPTER: dict[str, int] = {
    # 9 Start-up
    "Startup": 9, "Shutdown": 9,
    # 10 Testing
    "SelfTest": 10, "IncrementalSelfTest": 10, "GetTestResult": 10,
    # 11 Session Commands
    "StartAuthSession": 11, "PolicyRestart": 11,
    # 12 Object Commands
    "Create": 12, "Load": 12, "LoadExternal": 12, "ReadPublic": 12, "ActivateCredential": 12,
    "MakeCredential": 12, "Unseal": 12, "ObjectChangeAuth": 12, "CreateLoaded": 12,
    # 13 Duplication Commands
    "Duplicate": 13, "Rewrap": 13, "Import": 13,
    # 14 Asymmetric Primitives
    "RSA_Encrypt": 14, "RSA_Decrypt": 14, "ECDH_KeyGen": 14, "ECDH_ZGen": 14, "ECC_Parameters": 14,
    "ZGen_2Phase": 14,
    # 15 Symmetric Primitives
    "EncryptDecrypt": 15, "EncryptDecrypt2": 15, "Hash": 15, "HMAC": 15,
    # 16 Random Number Generator
    "GetRandom": 16, "StirRandom": 16,
    # 17 Hash/HMAC/Event Sequences
    "HMAC_Start": 17, "HashSequenceStart": 17, "SequenceUpdate": 17, "SequenceComplete": 17,
    "EventSequenceComplete": 17,
    # 18 Attestation Commands
    "Certify": 18, "CertifyCreation": 18, "Quote": 18, "GetSessionAuditDigest": 18,
    "GetCommandAuditDigest": 18, "GetTime": 18, "CertifyX509": 18,
    # 19 Ephemeral EC Keys
    "Commit": 19, "EC_Ephemeral": 19,
    # 20 Signing and Signature Verification
    "VerifySignature": 20, "Sign": 20,
    # 21 Command Audit
    "SetCommandCodeAuditStatus": 21,
    # 22 Integrity Collection (PCR)
    "PCR_Extend": 22, "PCR_Event": 22, "PCR_Read": 22, "PCR_Allocate": 22, "PCR_SetAuthPolicy": 22,
    "PCR_SetAuthValue": 22, "PCR_Reset": 22,
    # 23 Enhanced Authorization (EA) Commands
    "PolicySigned": 23, "PolicySecret": 23, "PolicyTicket": 23, "PolicyOR": 23, "PolicyPCR": 23,
    "PolicyLocality": 23, "PolicyNV": 23, "PolicyCounterTimer": 23, "PolicyCommandCode": 23,
    "PolicyCpHash": 23, "PolicyNameHash": 23, "PolicyDuplicationSelect": 23, "PolicyAuthorize": 23,
    "PolicyAuthValue": 23, "PolicyPassword": 23, "PolicyGetDigest": 23, "PolicyNvWritten": 23,
    "PolicyPhysicalPresence": 23, "PolicyTemplate": 23, "PolicyAuthorizeNV": 23,
    # 24 Hierarchy Commands
    "CreatePrimary": 24, "HierarchyControl": 24, "SetPrimaryPolicy": 24, "ChangePPS": 24, "ChangeEPS": 24,
    "Clear": 24, "ClearControl": 24, "HierarchyChangeAuth": 24,
    # 25 Dictionary Attack Functions
    "DictionaryAttackLockReset": 25, "DictionaryAttackParameters": 25,
    # 26 Miscellaneous Management Functions
    "PP_Commands": 26, "SetAlgorithmSet": 26,
    # 28 Context Management
    "ContextSave": 28, "ContextLoad": 28, "FlushContext": 28, "EvictControl": 28,
    # 29 Clocks and Timers
    "ReadClock": 29, "ClockSet": 29, "ClockRateAdjust": 29,
    # 30 Capability Commands
    "GetCapability": 30, "TestParms": 30,
    # 31 Non-volatile Storage
    "NV_DefineSpace": 31, "NV_UndefineSpace": 31, "NV_UndefineSpaceSpecial": 31, "NV_ReadPublic": 31,
    "NV_Write": 31, "NV_Increment": 31, "NV_Extend": 31, "NV_SetBits": 31, "NV_WriteLock": 31,
    "NV_GlobalWriteLock": 31, "NV_Read": 31, "NV_ReadLock": 31, "NV_ChangeAuth": 31, "NV_Certify": 31,
}


# ----------------------------------------------------------------------------- the rules


def test_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
                              "def f():\n    from pkg.sub import c\n")
    (pkg / "b.py").write_text("import os\nX = 1\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import X\n")
    (pkg / "sub" / "c.py").write_text("from .. import b\nfrom ..b import X\nimport pkg.sub\n")
    graph = import_graph(["pkg"], tmp_path)
    assert graph == {
        "pkg": set(), "pkg.a": {"pkg.sub.c"}, "pkg.b": set(), "pkg.sub": {"pkg.sub.c"},
        "pkg.sub.c": {"pkg.b", "pkg.sub"},
    }
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.c"]]
    assert find_cycles({"x": {"y"}, "y": set()}) == []


def test_vtpm_has_no_import_cycles() -> None:
    cycles = find_cycles(within(import_graph(["vtpm"]), "vtpm"))
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_command_modules_import_no_other_command_module() -> None:
    graph = within(import_graph(["vtpm"]), COMMANDS_PACKAGE)
    problems = []
    for module, targets in sorted(graph.items()):
        if module in (COMMANDS_PACKAGE, EA_PACKAGE):  # the packages import their chapters to register them
            continue
        for target in sorted(targets):
            if module.startswith(EA_PACKAGE + ".") and target == EA_HELPERS:
                continue  # Enhanced Authorization's own shared helpers
            problems.append(f"{module} imports {target}")
    assert not problems, "command modules importing command modules:\n" + "\n".join(problems)


def test_chapters_name_the_command_modules() -> None:
    modules = module_files(["vtpm"])
    for name, (chapter, title) in CHAPTERS.items():
        assert f"{COMMANDS_PACKAGE}.{name}" in modules, name
        assert isinstance(chapter, int) and title
    chapters = [chapter for chapter, _ in CHAPTERS.values()]
    assert len(chapters) == len(set(chapters)), "one module per chapter"
    assert set(chapters) <= set(PART3_CHAPTER.values())


def test_every_handler_lives_in_its_part3_chapter() -> None:
    module_of = {chapter: f"{COMMANDS_PACKAGE}.{name}" for name, (chapter, _) in CHAPTERS.items()}
    problems = []
    for code, spec in sorted(COMMANDS.items()):
        name = CC(code).name
        if name not in PART3_CHAPTER:
            problems.append(f"{name}: registered but missing from PART3_CHAPTER")
            continue
        chapter = PART3_CHAPTER[name]
        expected = module_of.get(chapter)
        module = spec.handler.__module__
        if expected is None:
            problems.append(f"{name}: chapter {chapter} has no module in CHAPTERS")
        elif module != expected and not module.startswith(expected + "."):
            problems.append(f"{name}: handler in {module}, chapter {chapter} is {expected}")
    assert not problems, "\n".join(problems)
