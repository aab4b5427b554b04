"""Where the service keeps its socket, its state and its logs by default, and how a
private directory is made safely."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = [
    "default_log_dir",
    "default_socket_path",
    "default_state_dir",
    "private_dir",
]

SOCKET_NAME = "jobworker.sock"


def default_socket_path() -> Path:
    """The local socket: ``/run/jobworker/`` for root, else ``$XDG_RUNTIME_DIR/jobworker/``
    (``/tmp/jobworker-<uid>/`` without one)."""
    if os.geteuid() == 0:
        return Path("/run/jobworker") / SOCKET_NAME
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "jobworker" / SOCKET_NAME
    return Path(f"/tmp/jobworker-{os.geteuid()}") / SOCKET_NAME


def default_state_dir() -> Path:
    """``/var/lib/jobworker`` for root, else ``$XDG_STATE_HOME/jobworker``
    (``~/.local/state/jobworker``)."""
    if os.geteuid() == 0:
        return Path("/var/lib/jobworker")
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "jobworker"


def default_log_dir() -> Path:
    """``logs/`` in the state directory."""
    return default_state_dir() / "logs"


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) a directory only this user can enter: mode 0700,
    owned by us, not a symlink.  An existing one must already be so: one owned by someone
    else could have been made first by another user (in ``/tmp``), and one with a wider
    mode is not ours to tighten (it may be shared on purpose)."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        raise OSError(f"{path} has mode {mode:04o}; it must be 0700 (private to this user)")
    return path
