from collections.abc import Sequence

STAGE_OK: int
STAGE_CGROUP: int
STAGE_FDS: int
STAGE_CWD: int
STAGE_EXEC: int
STAGE_LOG: int
STAGE_GROUPS: int
STAGE_GID: int
STAGE_UID: int
STAGE_DIED: int
STAGE_PIDFD: int

def spawn(
    paths: Sequence[str | bytes],
    argv: Sequence[str | bytes],
    envp: Sequence[str | bytes],
    cwd: str | bytes | None,
    out_fd: int,
    cgroup_procs: Sequence[str | bytes],
    cgroup2_dir: str | bytes | None,
    log_dir_fd: int,
    log_base: str | bytes,
    run_as: tuple[int, int, Sequence[int]] | None,
    nofile: int,
    /,
) -> tuple[int, int, int, bytes, int, int]: ...
def slots() -> tuple[int, int]: ...
def set_without_close_range(on: bool, /) -> None: ...
def set_without_clone_pidfd(on: bool, /) -> None: ...
def set_without_clone_into_cgroup(on: bool, /) -> None: ...
def set_always_clone_into_cgroup(on: bool, /) -> None: ...
def clone_into_cgroup_usable() -> bool: ...
