"""What a new inventory user's password must be: long enough, and not the user's name.

Checked where a password is chosen (``inventory init``, ``inventory user-add``);
stored passwords are still hashed with scrypt by the inventory. Logging in is
not checked: a policy never locks out an existing user.
"""

from __future__ import annotations

from vmcrypt.errors import VmcryptError

MIN_LENGTH = 12


class WeakPassword(VmcryptError):
    """A new password that the policy refuses; the message says why, never the password."""


def check_new_password(user: str, password: str) -> None:
    """Refuse a password shorter than MIN_LENGTH characters or one that is or contains the user name."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"the password for '{user}' is too short: use at least {MIN_LENGTH} characters")
    if user and user.casefold() in password.casefold():
        raise WeakPassword(f"the password for '{user}' contains the user name: choose another")
