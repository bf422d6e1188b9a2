"""Graph surgery shared by rewrites and lowerings."""

from __future__ import annotations

import onnx_ir as ir


def replace_value(old: ir.Value, new: ir.Value, *, drop: ir.Node | None = None) -> None:
    """Make `new` stand in for `old` everywhere (graph outputs included), under `old`'s name
    and with its shape and type, so names that users and manifests refer to stay stable.

    `drop`: the node producing `old`, removed here; without it `old` stays (now unused) and
    is renamed `<name>.dense` so that the two names do not clash.
    """
    new.shape, new.type = old.shape, old.type
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if drop is not None:
        drop.graph.remove(drop, safe=True)
    else:
        old.name = f"{name}.dense"
    new.name = name
