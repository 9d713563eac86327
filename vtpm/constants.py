"""TPM 2.0 constants (TCG TPM 2.0 Library, Part 2: Structures) as enums.

Only values are here; behaviour lives in the engine and command modules.
"""

from __future__ import annotations

import enum


class ST(enum.IntEnum):
    """TPM_ST structure tags."""

    RSP_COMMAND = 0x00C4
    NULL = 0x8000
    NO_SESSIONS = 0x8001
    SESSIONS = 0x8002
    ATTEST_NV = 0x8014
    ATTEST_COMMAND_AUDIT = 0x8015
    ATTEST_SESSION_AUDIT = 0x8016
    ATTEST_CERTIFY = 0x8017
    ATTEST_QUOTE = 0x8018
    ATTEST_TIME = 0x8019
    ATTEST_CREATION = 0x801A
    ATTEST_NV_DIGEST = 0x801C
    CREATION = 0x8021
    VERIFIED = 0x8022
    AUTH_SECRET = 0x8023
    HASHCHECK = 0x8024
    AUTH_SIGNED = 0x8025
    FU_MANIFEST = 0x8029


class SU(enum.IntEnum):
    """TPM_SU startup and shutdown types (Part 2 6.5)."""

    CLEAR = 0x0000
    STATE = 0x0001


class ALG(enum.IntEnum):
    """TPM_ALG_ID algorithm identifiers (Part 2 6.3)."""

    ERROR = 0x0000
    RSA = 0x0001
    TDES = 0x0003
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    MGF1 = 0x0007
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    SM4 = 0x0013
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CAMELLIA = 0x0026
    SHA3_256 = 0x0027
    SHA3_384 = 0x0028
    SHA3_512 = 0x0029
    CMAC = 0x003F
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


class CC(enum.IntEnum):
    """TPM_CC command codes."""

    NV_UndefineSpaceSpecial = 0x011F
    EvictControl = 0x0120
    HierarchyControl = 0x0121
    NV_UndefineSpace = 0x0122
    ChangeEPS = 0x0124
    ChangePPS = 0x0125
    Clear = 0x0126
    ClearControl = 0x0127
    ClockSet = 0x0128
    HierarchyChangeAuth = 0x0129
    NV_DefineSpace = 0x012A
    PCR_Allocate = 0x012B
    PCR_SetAuthPolicy = 0x012C
    PP_Commands = 0x012D
    SetPrimaryPolicy = 0x012E
    FieldUpgradeStart = 0x012F
    ClockRateAdjust = 0x0130
    CreatePrimary = 0x0131
    NV_GlobalWriteLock = 0x0132
    GetCommandAuditDigest = 0x0133
    NV_Increment = 0x0134
    NV_SetBits = 0x0135
    NV_Extend = 0x0136
    NV_Write = 0x0137
    NV_WriteLock = 0x0138
    DictionaryAttackLockReset = 0x0139
    DictionaryAttackParameters = 0x013A
    NV_ChangeAuth = 0x013B
    PCR_Event = 0x013C
    PCR_Reset = 0x013D
    SequenceComplete = 0x013E
    SetAlgorithmSet = 0x013F
    SetCommandCodeAuditStatus = 0x0140
    FieldUpgradeData = 0x0141
    IncrementalSelfTest = 0x0142
    SelfTest = 0x0143
    Startup = 0x0144
    Shutdown = 0x0145
    StirRandom = 0x0146
    ActivateCredential = 0x0147
    Certify = 0x0148
    PolicyNV = 0x0149
    CertifyCreation = 0x014A
    Duplicate = 0x014B
    GetTime = 0x014C
    GetSessionAuditDigest = 0x014D
    NV_Read = 0x014E
    NV_ReadLock = 0x014F
    ObjectChangeAuth = 0x0150
    PolicySecret = 0x0151
    Rewrap = 0x0152
    Create = 0x0153
    ECDH_ZGen = 0x0154
    HMAC = 0x0155
    Import = 0x0156
    Load = 0x0157
    Quote = 0x0158
    RSA_Decrypt = 0x0159
    HMAC_Start = 0x015B
    SequenceUpdate = 0x015C
    Sign = 0x015D
    Unseal = 0x015E
    PolicySigned = 0x0160
    ContextLoad = 0x0161
    ContextSave = 0x0162
    ECDH_KeyGen = 0x0163
    EncryptDecrypt = 0x0164
    FlushContext = 0x0165
    LoadExternal = 0x0167
    MakeCredential = 0x0168
    NV_ReadPublic = 0x0169
    PolicyAuthorize = 0x016A
    PolicyAuthValue = 0x016B
    PolicyCommandCode = 0x016C
    PolicyCounterTimer = 0x016D
    PolicyCpHash = 0x016E
    PolicyLocality = 0x016F
    PolicyNameHash = 0x0170
    PolicyOR = 0x0171
    PolicyTicket = 0x0172
    ReadPublic = 0x0173
    RSA_Encrypt = 0x0174
    StartAuthSession = 0x0176
    VerifySignature = 0x0177
    ECC_Parameters = 0x0178
    FirmwareRead = 0x0179
    GetCapability = 0x017A
    GetRandom = 0x017B
    GetTestResult = 0x017C
    Hash = 0x017D
    PCR_Read = 0x017E
    PolicyPCR = 0x017F
    PolicyRestart = 0x0180
    ReadClock = 0x0181
    PCR_Extend = 0x0182
    PCR_SetAuthValue = 0x0183
    NV_Certify = 0x0184
    EventSequenceComplete = 0x0185
    HashSequenceStart = 0x0186
    PolicyPhysicalPresence = 0x0187
    PolicyDuplicationSelect = 0x0188
    PolicyGetDigest = 0x0189
    TestParms = 0x018A
    Commit = 0x018B
    PolicyPassword = 0x018C
    ZGen_2Phase = 0x018D
    EC_Ephemeral = 0x018E
    PolicyNvWritten = 0x018F
    PolicyTemplate = 0x0190
    CreateLoaded = 0x0191
    PolicyAuthorizeNV = 0x0192
    EncryptDecrypt2 = 0x0193
    CertifyX509 = 0x0197


class RC(enum.IntEnum):
    """TPM_RC response codes (base values, before handle/parameter/session numbers)."""

    SUCCESS = 0x000
    BAD_TAG = 0x01E
    # format 0, version 1 errors
    INITIALIZE = 0x100
    FAILURE = 0x101
    SEQUENCE = 0x103
    PRIVATE = 0x10B
    HMAC = 0x119
    DISABLED = 0x120
    EXCLUSIVE = 0x121
    AUTH_TYPE = 0x124
    AUTH_MISSING = 0x125
    POLICY = 0x126
    PCR = 0x127
    PCR_CHANGED = 0x128
    UPGRADE = 0x12D
    TOO_MANY_CONTEXTS = 0x12E
    AUTH_UNAVAILABLE = 0x12F
    REBOOT = 0x130
    UNBALANCED = 0x131
    COMMAND_SIZE = 0x142
    COMMAND_CODE = 0x143
    AUTHSIZE = 0x144
    AUTH_CONTEXT = 0x145
    NV_RANGE = 0x146
    NV_SIZE = 0x147
    NV_LOCKED = 0x148
    NV_AUTHORIZATION = 0x149
    NV_UNINITIALIZED = 0x14A
    NV_SPACE = 0x14B
    NV_DEFINED = 0x14C
    BAD_CONTEXT = 0x150
    CPHASH = 0x151
    PARENT = 0x152
    NEEDS_TEST = 0x153
    NO_RESULT = 0x154
    SENSITIVE = 0x155
    # format 1 errors (may carry a handle, parameter or session number)
    ASYMMETRIC = 0x081
    ATTRIBUTES = 0x082
    HASH = 0x083
    VALUE = 0x084
    HIERARCHY = 0x085
    KEY_SIZE = 0x087
    MGF = 0x088
    MODE = 0x089
    TYPE = 0x08A
    HANDLE = 0x08B
    KDF = 0x08C
    RANGE = 0x08D
    AUTH_FAIL = 0x08E
    NONCE = 0x08F
    PP = 0x090
    SCHEME = 0x092
    SIZE = 0x095
    SYMMETRIC = 0x096
    TAG = 0x097
    SELECTOR = 0x098
    INSUFFICIENT = 0x09A
    SIGNATURE = 0x09B
    KEY = 0x09C
    POLICY_FAIL = 0x09D
    INTEGRITY = 0x09F
    TICKET = 0x0A0
    RESERVED_BITS = 0x0A1
    BAD_AUTH = 0x0A2
    EXPIRED = 0x0A3
    POLICY_CC = 0x0A4
    BINDING = 0x0A5
    CURVE = 0x0A6
    ECC_POINT = 0x0A7
    # warnings
    CONTEXT_GAP = 0x901
    OBJECT_MEMORY = 0x902
    SESSION_MEMORY = 0x903
    MEMORY = 0x904
    SESSION_HANDLES = 0x905
    OBJECT_HANDLES = 0x906
    LOCALITY = 0x907
    YIELDED = 0x908
    CANCELED = 0x909
    TESTING = 0x90A
    REFERENCE_H0 = 0x910
    REFERENCE_S0 = 0x918
    NV_RATE = 0x920
    LOCKOUT = 0x921
    RETRY = 0x922
    NV_UNAVAILABLE = 0x923


RC_FMT1 = 0x080
RC_P = 0x040  # parameter number follows
RC_S = 0x800  # session number follows (when RC_P is clear)
RC_N_SHIFT = 8



class HT(enum.IntEnum):
    """TPM_HT handle types (the top byte of a handle)."""

    PCR = 0x00
    NV_INDEX = 0x01
    HMAC_SESSION = 0x02
    POLICY_SESSION = 0x03
    PERMANENT = 0x40
    TRANSIENT = 0x80
    PERSISTENT = 0x81


class RH(enum.IntEnum):
    """Permanent handles."""

    SRK = 0x40000000
    OWNER = 0x40000001
    REVOKE = 0x40000002
    TRANSPORT = 0x40000003
    OPERATOR = 0x40000004
    ADMIN = 0x40000005
    EK = 0x40000006
    NULL = 0x40000007
    UNASSIGNED = 0x40000008
    PW = 0x40000009  # TPM_RS_PW
    LOCKOUT = 0x4000000A
    ENDORSEMENT = 0x4000000B
    PLATFORM = 0x4000000C
    PLATFORM_NV = 0x4000000D


class CAP(enum.IntEnum):
    """TPM_CAP capability groups of GetCapability (Part 2 6.12)."""

    ALGS = 0x00000000
    HANDLES = 0x00000001
    COMMANDS = 0x00000002
    PP_COMMANDS = 0x00000003
    AUDIT_COMMANDS = 0x00000004
    PCRS = 0x00000005
    TPM_PROPERTIES = 0x00000006
    PCR_PROPERTIES = 0x00000007
    ECC_CURVES = 0x00000008
    AUTH_POLICIES = 0x00000009
    ACT = 0x0000000A
    VENDOR_PROPERTY = 0x00000100


class PT(enum.IntEnum):
    """TPM_PT properties."""

    FAMILY_INDICATOR = 0x100
    LEVEL = 0x101
    REVISION = 0x102
    DAY_OF_YEAR = 0x103
    YEAR = 0x104
    MANUFACTURER = 0x105
    VENDOR_STRING_1 = 0x106
    VENDOR_STRING_2 = 0x107
    VENDOR_STRING_3 = 0x108
    VENDOR_STRING_4 = 0x109
    VENDOR_TPM_TYPE = 0x10A
    FIRMWARE_VERSION_1 = 0x10B
    FIRMWARE_VERSION_2 = 0x10C
    INPUT_BUFFER = 0x10D
    HR_TRANSIENT_MIN = 0x10E
    HR_PERSISTENT_MIN = 0x10F
    HR_LOADED_MIN = 0x110
    ACTIVE_SESSIONS_MAX = 0x111
    PCR_COUNT = 0x112
    PCR_SELECT_MIN = 0x113
    CONTEXT_GAP_MAX = 0x114
    NV_COUNTERS_MAX = 0x116
    NV_INDEX_MAX = 0x117
    MEMORY = 0x118
    CLOCK_UPDATE = 0x119
    CONTEXT_HASH = 0x11A
    CONTEXT_SYM = 0x11B
    CONTEXT_SYM_SIZE = 0x11C
    ORDERLY_COUNT = 0x11D
    MAX_COMMAND_SIZE = 0x11E
    MAX_RESPONSE_SIZE = 0x11F
    MAX_DIGEST = 0x120
    MAX_OBJECT_CONTEXT = 0x121
    MAX_SESSION_CONTEXT = 0x122
    PS_FAMILY_INDICATOR = 0x123
    PS_LEVEL = 0x124
    PS_REVISION = 0x125
    PS_DAY_OF_YEAR = 0x126
    PS_YEAR = 0x127
    SPLIT_MAX = 0x128
    TOTAL_COMMANDS = 0x129
    LIBRARY_COMMANDS = 0x12A
    VENDOR_COMMANDS = 0x12B
    NV_BUFFER_MAX = 0x12C
    MODES = 0x12D
    MAX_CAP_BUFFER = 0x12E
    PERMANENT = 0x200
    STARTUP_CLEAR = 0x201
    HR_NV_INDEX = 0x202
    HR_LOADED = 0x203
    HR_LOADED_AVAIL = 0x204
    HR_ACTIVE = 0x205
    HR_ACTIVE_AVAIL = 0x206
    HR_TRANSIENT_AVAIL = 0x207
    HR_PERSISTENT = 0x208
    HR_PERSISTENT_AVAIL = 0x209
    NV_COUNTERS = 0x20A
    NV_COUNTERS_AVAIL = 0x20B
    ALGORITHM_SET = 0x20C
    LOADED_CURVES = 0x20D
    LOCKOUT_COUNTER = 0x20E
    MAX_AUTH_FAIL = 0x20F
    LOCKOUT_INTERVAL = 0x210
    LOCKOUT_RECOVERY = 0x211
    NV_WRITE_RECOVERY = 0x212
    AUDIT_COUNTER_0 = 0x213
    AUDIT_COUNTER_1 = 0x214


PT_FIXED = 0x100
PT_VAR = 0x200


class PT_PCR(enum.IntEnum):
    """TPM_PT_PCR PCR properties of GetCapability (Part 2 6.14)."""

    SAVE = 0x00
    EXTEND_L0 = 0x01
    RESET_L0 = 0x02
    EXTEND_L1 = 0x03
    RESET_L1 = 0x04
    EXTEND_L2 = 0x05
    RESET_L2 = 0x06
    EXTEND_L3 = 0x07
    RESET_L3 = 0x08
    EXTEND_L4 = 0x09
    RESET_L4 = 0x0A
    NO_INCREMENT = 0x11
    DRTM_RESET = 0x12
    POLICY = 0x13
    AUTH = 0x14


class TPMA_NV(enum.IntFlag):
    """TPMA_NV attributes of an NV index (Part 2 13.4)."""

    PPWRITE = 1 << 0
    OWNERWRITE = 1 << 1
    AUTHWRITE = 1 << 2
    POLICYWRITE = 1 << 3
    TPM_NT_MASK = 0xF << 4
    POLICY_DELETE = 1 << 10
    WRITELOCKED = 1 << 11
    WRITEALL = 1 << 12
    WRITEDEFINE = 1 << 13
    WRITE_STCLEAR = 1 << 14
    GLOBALLOCK = 1 << 15
    PPREAD = 1 << 16
    OWNERREAD = 1 << 17
    AUTHREAD = 1 << 18
    POLICYREAD = 1 << 19
    NO_DA = 1 << 25
    ORDERLY = 1 << 26
    CLEAR_STCLEAR = 1 << 27
    READLOCKED = 1 << 28
    WRITTEN = 1 << 29
    PLATFORMCREATE = 1 << 30
    READ_STCLEAR = 1 << 31


NV_RESERVED_MASK = (1 << 8) | (1 << 9) | (0x1F << 20)  # TPMA_NV bits 8-9 and 20-24


class NT(enum.IntEnum):
    """TPM_NT: the kind of an NV index (bits 4-7 of TPMA_NV)."""

    ORDINARY = 0x0
    COUNTER = 0x1
    BITS = 0x2
    EXTEND = 0x4
    PIN_FAIL = 0x8
    PIN_PASS = 0x9


class TPMA_SESSION(enum.IntFlag):
    """TPMA_SESSION attributes of a session in a command or response (Part 2 8.4)."""

    CONTINUE_SESSION = 0x01
    AUDIT_EXCLUSIVE = 0x02
    AUDIT_RESET = 0x04
    DECRYPT = 0x20
    ENCRYPT = 0x40
    AUDIT = 0x80


class TPMA_PERMANENT(enum.IntFlag):
    """TPMA_PERMANENT: persistent TPM settings reported by GetCapability (Part 2 8.6)."""

    OWNER_AUTH_SET = 1 << 0
    ENDORSEMENT_AUTH_SET = 1 << 1
    LOCKOUT_AUTH_SET = 1 << 2
    DISABLE_CLEAR = 1 << 8
    IN_LOCKOUT = 1 << 9
    TPM_GENERATED_EPS = 1 << 10


class TPMA_STARTUP_CLEAR(enum.IntFlag):
    """TPMA_STARTUP_CLEAR: hierarchy enables reset by Startup(CLEAR) (Part 2 8.7)."""

    PH_ENABLE = 1 << 0
    SH_ENABLE = 1 << 1
    EH_ENABLE = 1 << 2
    PH_ENABLE_NV = 1 << 3
    ORDERLY = 1 << 31


class TPMA_ALGORITHM(enum.IntFlag):
    """TPMA_ALGORITHM: what kind of algorithm an ALG is (Part 2 8.2)."""

    ASYMMETRIC = 1 << 0
    SYMMETRIC = 1 << 1
    HASH = 1 << 2
    OBJECT = 1 << 3
    SIGNING = 1 << 8
    ENCRYPTING = 1 << 9
    METHOD = 1 << 10


class ECC_CURVE(enum.IntEnum):
    """TPM_ECC_CURVE identifiers (Part 2 6.4)."""

    NONE = 0x0000
    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005
    BN_P256 = 0x0010
    BN_P638 = 0x0011
    SM2_P256 = 0x0020


TPM_GENERATED_VALUE = 0xFF544347

# Handle ranges
NV_INDEX_FIRST = 0x01000000
NV_INDEX_LAST = 0x01FFFFFF
PCR_FIRST = 0x00000000
TRANSIENT_FIRST = 0x80000000
PERSISTENT_FIRST = 0x81000000
HMAC_SESSION_FIRST = 0x02000000
POLICY_SESSION_FIRST = 0x03000000
PERMANENT_FIRST = 0x40000000


class TPMA_OBJECT(enum.IntFlag):
    """TPMA_OBJECT attributes of a key or data object (Part 2 8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18
    X509_SIGN = 1 << 19


OBJECT_RESERVED_MASK = 0x1 | (1 << 3) | (0x3 << 8) | (0xF << 12) | (0xFFF << 20)
