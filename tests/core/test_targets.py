"""Targets and backends are registered classes, found by name."""

from __future__ import annotations

import pytest

from sparsec.backends import Backend, get_backend, known_backends, register_backend
from sparsec.errors import OptionError
from sparsec.targets import Target, get_target, known_targets, register_target


def test_cpu_target_owns_its_backend_multiple_and_roofline() -> None:
    cpu = get_target("cpu")
    assert cpu.backend == "ort" and cpu.channel_multiple == 16
    assert cpu.peak_gflops > 0 and cpu.dram_gbps > 0
    assert cpu.accelerates("nm") and cpu.accelerates("NMSparse") and not cpu.accelerates("unstructured")
    assert get_backend(cpu.backend).name == "ort"
    assert "cpu" in known_targets() and "ort" in known_backends()


def test_unknown_names_are_one_line_errors_listing_the_known_ones() -> None:
    with pytest.raises(OptionError, match=r"unknown target 'tpu' \(known: .*cpu") as e:
        get_target("tpu")
    assert "\n" not in str(e.value)
    with pytest.raises(OptionError, match=r"unknown backend 'nope' \(known: .*ort"):
        get_backend("nope")


@pytest.fixture
def scratch_registries():  # noqa: ANN201
    import sparsec.backends.base as backends
    import sparsec.targets as targets

    saved = dict(targets._REGISTRY._classes), dict(backends._REGISTRY._classes)
    yield
    targets._REGISTRY._classes.clear(), targets._REGISTRY._classes.update(saved[0])
    backends._REGISTRY._classes.clear(), backends._REGISTRY._classes.update(saved[1])


@pytest.mark.usefixtures("scratch_registries")
def test_registering_a_new_target_and_backend_needs_only_the_classes() -> None:
    @register_backend
    class EchoBackend(Backend):
        name = "echo-test"

        def legalize_pipeline(self):  # noqa: ANN202
            return get_backend("ort").legalize_pipeline()

        def runner(self, compiled, threads=2):  # noqa: ANN001, ANN202
            return lambda feeds: []

    @register_target
    class EchoTarget(Target):
        name = "echo-test"
        backend = "echo-test"
        channel_multiple = 8

    assert get_target("echo-test").channel_multiple == 8
    assert isinstance(get_backend(get_target("echo-test").backend), EchoBackend)
    with pytest.raises(ValueError, match="registered twice"):

        @register_target
        class Clash(Target):
            name = "echo-test"
            backend = "ort"
