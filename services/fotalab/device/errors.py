"""Every exception the device raises on purpose, in one hierarchy.

The engine tells them apart by type: a TransportError is retried with backoff and the
download resumes; an UpdateFailed ends the attempt and leaves the running image untouched.
Reboot is not an error: it is how the firmware asks the supervisor for a reset.
"""
from __future__ import annotations


class DeviceError(Exception):
    """Base of the device's errors."""


class TransportError(DeviceError):
    """A transient network failure: retried with backoff, the download resumes."""


class UpdateFailed(DeviceError):
    """The update was refused or failed for good; the running image is untouched."""


class FlashDisciplineError(DeviceError, RuntimeError):
    """Code read data it had not made durable: a bug in the caller, not a flash fault."""


class Reboot(Exception):  # noqa: N818 - a request, not an error
    """Restart into the bootloader (raised after staging and after a failed trial)."""
