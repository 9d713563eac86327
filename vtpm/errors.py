"""The one exception a command raises to answer with a TPM response code."""

from __future__ import annotations

from vtpm.constants import RC, RC_FMT1, RC_N_SHIFT, RC_P, RC_S


class TpmError(Exception):
    """Abort the command with ``rc``, optionally naming the handle, parameter or session at fault.

    Numbers are 1-based, as in the spec (parameter 1 is the first parameter).
    Only format-1 codes carry a number; for others the number is ignored.
    """

    def __init__(self, rc: int, *, param: int = 0, handle: int = 0, session: int = 0) -> None:
        self.rc = int(rc)
        self.param = param
        self.handle = handle
        self.session = session
        super().__init__(f"{_name(self.rc)} (0x{self.code:03X})")

    @property
    def code(self) -> int:
        """The response code as sent: the format-1 base code with the parameter, handle or session number."""
        rc = self.rc
        if not rc & RC_FMT1 or rc & 0x900 == 0x900:
            return rc
        if self.param:
            return rc | RC_P | ((self.param & 0xF) << RC_N_SHIFT)
        if self.session:
            return rc | RC_S | ((self.session & 0x7) << RC_N_SHIFT)
        if self.handle:
            return rc | ((self.handle & 0x7) << RC_N_SHIFT)
        return rc

    def at_param(self, number: int) -> "TpmError":
        """The same error attributed to parameter ``number`` unless it already names a place."""
        if not (self.param or self.handle or self.session):
            self.param = number
        return self


def _name(rc: int) -> str:
    try:
        return f"TPM_RC_{RC(rc).name}"
    except ValueError:
        return "TPM_RC_UNKNOWN"
