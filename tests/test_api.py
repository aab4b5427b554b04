import jobworker


def test_public_surface_is_exactly_all() -> None:
    public = {n for n in dir(jobworker) if not n.startswith("_")}
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
