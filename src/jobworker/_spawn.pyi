from collections.abc import Sequence

STAGE_OK: int
STAGE_CGROUP: int
STAGE_FDS: int
STAGE_CWD: int
STAGE_EXEC: int
STAGE_LOG: int

def spawn(
    paths: Sequence[str | bytes],
    argv: Sequence[str | bytes],
    envp: Sequence[str | bytes],
    cwd: str | bytes | None,
    out_fd: int,
    cgroup_procs: Sequence[str | bytes],
    log_dir_fd: int,
    log_base: str | bytes,
    /,
) -> tuple[int, int, int, bytes, int, int]: ...
def slots() -> tuple[int, int]: ...
def set_without_close_range(on: bool, /) -> None: ...
