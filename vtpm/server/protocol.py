"""The codes of the two TPM transport protocols: swtpm's control channel and the mssim platform port.

Declared apart from the servers so a client (``vtpm.transport``) can speak
the protocols without loading the engine.
"""

from __future__ import annotations

import enum

# ----------------------------------------------------------------------------- swtpm control channel

class Ctrl(enum.IntEnum):
    """swtpm's control-channel command codes (CMD_*), as its ``tpm_ioctl.h`` numbers them."""

    GET_CAPABILITY = 0x01
    INIT = 0x02
    SHUTDOWN = 0x03
    GET_TPMESTABLISHED = 0x04
    SET_LOCALITY = 0x05
    HASH_START = 0x06
    HASH_DATA = 0x07
    HASH_END = 0x08
    CANCEL_TPM_CMD = 0x09
    STORE_VOLATILE = 0x0A
    RESET_TPMESTABLISHED = 0x0B
    GET_STATEBLOB = 0x0C
    SET_STATEBLOB = 0x0D
    STOP = 0x0E
    GET_CONFIG = 0x0F
    SET_DATAFD = 0x10
    SET_BUFFERSIZE = 0x11
    GET_INFO = 0x12
    LOCK_STORAGE = 0x13


# TPM 1.2 result codes used on the control channel
TPM_SUCCESS = 0
TPM_BAD_PARAMETER = 3
TPM_FAIL = 9
TPM_BAD_ORDINAL = 10
TPM_IOERROR = 0x1F
TPM_BAD_LOCALITY = 0x3D

CAP_INIT = 1 << 0
CAP_SHUTDOWN = 1 << 1
CAP_GET_TPMESTABLISHED = 1 << 2
CAP_SET_LOCALITY = 1 << 3
CAP_CANCEL_TPM_CMD = 1 << 5
CAP_STORE_VOLATILE = 1 << 6
CAP_RESET_TPMESTABLISHED = 1 << 7
CAP_STOP = 1 << 10
CAP_GET_CONFIG = 1 << 11
CAP_SET_DATAFD = 1 << 12
CAP_SET_BUFFERSIZE = 1 << 13
CAP_GET_INFO = 1 << 14
CAP_GET_STATEBLOB = 1 << 8
CAP_SET_STATEBLOB = 1 << 9
CAP_LOCK_STORAGE = 1 << 16

INFO_TPMSPECIFICATION = 1 << 0
INFO_TPMATTRIBUTES = 1 << 1
INFO_MAX_CHUNK = 3 * 1024

STATE_FLAG_DECRYPTED = 1  # request: the blob in clear
STATE_FLAG_ENCRYPTED = 2  # answer or CMD_SET_STATEBLOB: the blob is encrypted (under a migration key)

# ----------------------------------------------------------------------------- mssim (Microsoft simulator)

MS_SIGNAL_POWER_ON = 1
MS_SIGNAL_POWER_OFF = 2
MS_SIGNAL_PHYS_PRES_ON = 3
MS_SIGNAL_PHYS_PRES_OFF = 4
MS_SIGNAL_HASH_START = 5
MS_SIGNAL_HASH_DATA = 6
MS_SIGNAL_HASH_END = 7
MS_SEND_COMMAND = 8
MS_SIGNAL_CANCEL_ON = 9
MS_SIGNAL_CANCEL_OFF = 10
MS_SIGNAL_NV_ON = 11
MS_SIGNAL_NV_OFF = 12
MS_SIGNAL_KEY_CACHE_ON = 13
MS_SIGNAL_KEY_CACHE_OFF = 14
MS_REMOTE_HANDSHAKE = 15
MS_SET_ALTERNATIVE_RESULT = 16
MS_SIGNAL_RESET = 17
MS_SESSION_END = 20
MS_STOP = 21
MS_ACT_GET_SIGNALED = 26
MS_TEST_FAILURE_MODE = 30
MS_PROTOCOL_VERSION = 1
