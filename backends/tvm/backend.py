"""`tvm`: Apache TVM (Relax) with sparsec's sparse kernels and explicit CPU schedules.

`sparsec compile --target=cpu --backend=tvm` legalizes as the ORT backend does (N:M layers to
`com.sparsec.kernels.NMSparseMatMul` on packed weights, everything else to standard ONNX),
imports the result into Relax (backends/tvm/importer.py: the kernel ops become
`call_dps_packed` calls into the C kernels), schedules the dense TIR (schedules.py) and
exports `model.so` with the kernels linked in (kernel_objects.py), plus `params.bin` (the
weights, TVM's param-dict format) and `tvm_signature.json` (inputs, outputs, target).

Targets choose the machine through `tvm_spec()` (a `TvmTargetSpec`: LLVM target, C
compiler, whether it runs here); a target without one builds for this host.
"""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

from sparsec.backends.base import Backend, CompiledModel, Runner, register_backend
from sparsec.backends.tvm.session import LIBRARY, PARAMS, SIGNATURE, TvmSession
from sparsec.backends.tvm.signature import input_signature
from sparsec.backends.tvm.target_spec import TvmTargetSpec, host_spec
from sparsec.backends.tvm.tuning import PRIOR_DATABASE, load_database
from sparsec.dialect import DOMAIN
from sparsec.errors import UnsupportedError
from sparsec.ir.io import inline_copy, to_proto
from sparsec.pm.pipeline import Pipeline, parse_pipeline


def spec_for(target: Any) -> TvmTargetSpec:
    """The TVM build spec of a sparsec target (`target.tvm_spec()`), else this host."""
    make = getattr(target, "tvm_spec", None)
    return make() if callable(make) else host_spec()


@register_backend
class TvmBackend(Backend):
    name = "tvm"
    fidelity_note = "model.so run by the TVM Relax VM on this machine"
    _spec: TvmTargetSpec | None = None  # the spec of the last build (its runner, for cross builds)

    def legalize_pipeline(self) -> Pipeline:
        return parse_pipeline("static-input-shapes,lower-nm-kernels,legalize-dense")

    def check(self, model: ir.Model) -> list[str]:
        try:
            import tvm  # noqa: F401
        except ImportError:
            return ["apache-tvm is not installed (pip install 'sparsec[tvm]')"]
        from sparsec.backends.tvm.importer import unsupported_ops

        left = [f"op {n.domain}.{n.op_type} (node '{n.name}') has no TVM lowering" for n in model.graph if n.domain == DOMAIN]
        return left + unsupported_ops(to_proto(model))

    def extra_files(self, model: ir.Model, target: Any) -> dict[str, bytes]:
        import tvm

        from sparsec.backends.tvm.build import build_model

        spec = self._spec = spec_for(target)
        # TVM's importer reads weights from the proto: spilled (external-data) weights of a
        # big model are loaded into memory first (GPT-2 small failed to import without this).
        proto = to_proto(inline_copy(model))
        prior = PRIOR_DATABASE.get() if spec.runs_here else None  # tuned here: only for this machine's build
        loaded = load_database(prior) if prior else None
        if loaded is not None:
            with loaded[1]:
                built = build_model(proto, spec, loaded[0])
        else:
            built = build_model(proto, spec)
        inputs = input_signature(proto, "tvm")
        signature = {"inputs": inputs, "outputs": built.output_names, "build": built.info,
                     "runs_here": spec.runs_here}
        params = tvm.runtime.save_param_dict({f"p{i}": tvm.runtime.tensor(p) for i, p in enumerate(built.params)})
        return {
            **(prior if loaded is not None else {}),
            LIBRARY: built.library,
            PARAMS: bytes(params),
            SIGNATURE: json.dumps(signature, indent=2).encode() + b"\n",
        }

    def runner(self, compiled: CompiledModel, threads: int = 2) -> Runner:
        signature = json.loads(compiled.files[SIGNATURE])
        if not signature.get("runs_here", True):
            spec = self._spec
            if spec is not None and spec.make_runner is not None:
                return spec.make_runner(compiled.files, threads)
            raise UnsupportedError(f"backend 'tvm': a {signature['build']['arch']} build does not run on this machine")
        session = TvmSession(compiled.files, threads)
        return session.run
