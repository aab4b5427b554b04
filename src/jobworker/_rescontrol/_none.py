"""Resource control where no cgroup can be written: no limits, no containment."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from .._errors import LimitError
from .._model import Limits, Usage
from . import JobGroup, ResourceControl

__all__ = ["NoCgroups", "NoJobGroup"]


class NoJobGroup(JobGroup):
    """A job without cgroups: the caller falls back to signalling its process group."""

    @property
    def procs_files(self) -> Sequence[str]:
        return ()

    @property
    def events_file(self) -> str | None:
        return None

    def populated(self) -> bool:
        return False

    def kill(self) -> None:
        pass

    def usage(self) -> Usage:
        return Usage()

    def oom_killed(self) -> bool:
        return False

    def remove(self) -> None:
        pass


class NoCgroups(ResourceControl):
    """``reason`` says why cgroups are unusable here; it ends every ``LimitError``."""

    name = "none"
    contains = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def validate(self, limits: Limits) -> None:
        if not limits.empty:
            raise LimitError(
                f"resource limits need cgroups, which this worker cannot write: {self.reason}"
            )

    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        self.validate(limits)
        return NoJobGroup()

    def close(self) -> None:
        pass
