import subprocess
import sys
import types

import pytest

import jobworker


def test_public_surface_is_exactly_all() -> None:
    public = {
        n
        for n in dir(jobworker)
        # Subpackages (jobworker.cli, ...) appear here once something imported them.
        if not n.startswith("_") and not isinstance(getattr(jobworker, n), types.ModuleType)
    }
    assert public == set(jobworker.__all__)
    assert jobworker.__all__ == sorted(jobworker.__all__)


def test_one_base_exception() -> None:
    for name in jobworker.__all__:
        obj = getattr(jobworker, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, jobworker.JobworkerError)


def test_run_as_is_public() -> None:
    from jobworker._model import RunAs

    assert "RunAs" in jobworker.__all__ and jobworker.RunAs is RunAs


def test_the_types_come_without_the_worker_machinery() -> None:
    # A program that only needs the types (the CLI's --help, a client of the service)
    # must not pay for the worker's imports; asyncio alone is a large part of them.
    code = (
        "import sys, jobworker\n"
        "from jobworker import Command, JobInfo, JobNotFound, Limits, Status\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "jobworker._model" in loaded
    assert not loaded & {
        "asyncio",
        "jobworker._worker",
        "jobworker._reactor",
        "jobworker._rescontrol",
    }


def test_the_machinery_is_there_on_first_use() -> None:
    code = (
        "import jobworker\n"
        "from jobworker import Worker\n"
        "print(Worker.__module__, jobworker.detect.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["jobworker._worker", "detect"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="Wroker"):
        jobworker.Wroker  # type: ignore[attr-defined]  # noqa: B018
