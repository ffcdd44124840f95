"""Test setup: CPU backend with 8 fake devices, configured before jax is imported.

pytest imports this file before any test module, so the environment below is in place
when a test first imports jax. Set ``JAX_PLATFORMS`` yourself (e.g. ``cuda,cpu``) to run
the ``gpu``/``tpu`` marked tests on an accelerator; otherwise they are skipped.
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_COUNT_FLAG
    ).strip()


def _backend_platform() -> str:
    """Platform of jax's default device; imports jax lazily (after the env is set)."""
    import jax

    return jax.devices()[0].platform


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``/``tpu`` marked tests unless that backend is present."""
    del config
    needs = [
        (item, marker)
        for item in items
        for marker in ("gpu", "tpu")
        if item.get_closest_marker(marker) is not None
    ]
    if not needs:
        return
    platform = _backend_platform()
    for item, marker in needs:
        if platform != marker:
            item.add_marker(
                pytest.mark.skip(reason=f"needs a {marker} backend; jax platform is {platform}")
            )


@pytest.fixture(scope="module", autouse=True)
def _drop_compiled_programs_after_each_module():
    """Bound a test worker's memory: JAX keeps every compiled program of the process (an
    xdist worker runs half the suite, and its RSS kept growing past 8 GB); drop them when a
    module is done. Programs a later module needs again are recompiled."""
    yield
    import jax

    jax.clear_caches()
