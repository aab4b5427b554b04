from collections.abc import Sequence

SFD_NONBLOCK: int
SFD_CLOEXEC: int
SIGINFO_SIZE: int
FD_OFFSET: int

def signalfd(signals: Sequence[int], flags: int, /) -> int: ...
