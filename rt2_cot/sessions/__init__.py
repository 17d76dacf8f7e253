"""Recorded sessions: LeRobot v3.0 datasets written by the control loop and read by the console.

`SessionRecorder` (a loop subscriber) writes, `recover` closes episodes a crash left open,
`SessionDataset` reads, exports and deletes, `check_session` validates, `list_sessions` lists.
"""

from rt2_cot.errors import SessionError
from rt2_cot.sessions.check import CheckReport, check_session
from rt2_cot.sessions.dataset import SessionDataset, delete_session, list_sessions
from rt2_cot.sessions.layout import resolve_session
from rt2_cot.sessions.recorder import SessionRecorder, recover, set_grade

__all__ = [
    "CheckReport",
    "SessionDataset",
    "SessionError",
    "SessionRecorder",
    "check_session",
    "delete_session",
    "list_sessions",
    "recover",
    "resolve_session",
    "set_grade",
]
