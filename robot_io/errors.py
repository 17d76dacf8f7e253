"""Errors a user can cause through devices: unplugged cameras, bad recordings, unreachable arms."""


class RobotIOError(Exception):
    """Base for every user-facing device error. The message says what to do next."""


class CameraError(RobotIOError):
    """A camera could not be opened or read (not attached, busy, corrupt recording, unknown source)."""


class ArmError(RobotIOError):
    """An arm could not be connected or commanded."""


class SafetyError(RobotIOError):
    """A command was refused by the safety shield (e-stop latched, watchdog tripped)."""
