"""The public API: what the package root exports."""

from __future__ import annotations

import types

import streamer


def test_api_all_names_resolve() -> None:
    """Every name in __all__ exists at the package root."""
    for name in streamer.__all__:
        assert hasattr(streamer, name), name


def test_api_all_is_complete() -> None:
    """Every public name bound at the package root is listed in __all__."""
    public = {
        name
        for name, value in vars(streamer).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(streamer.__all__) - {"__version__"}
    assert len(streamer.__all__) == len(set(streamer.__all__))


def test_api_original_names_importable() -> None:
    """The original module's public names import from the package root."""
    from streamer import (  # noqa: F401
        ConversionJob,
        JobManager,
        JobStatus,
        check_memory_for_conversion,
        get_job_manager,
    )

    available, gb = check_memory_for_conversion()
    assert isinstance(available, bool) and gb > 0
