"""Find feed-forward blocks in ONNX graphs: Linear -> activation -> Linear (+ residual).

Works backwards from every weight layer (the candidate down projection): its input is
followed through elementwise ops until each path ends in a constant or in an up projection
(a MatMul/Gemm with a constant weight, with its bias Add and the Reshapes exporters put
around 2-D Gemms). One up projection is a plain FFN, two with the same input a gated one
(SwiGLU/GeGLU). The subgraph in between is then *evaluated* on a grid and compared with the
known activations (`activations.py`): exporters spell GELU as Erf or Tanh chains or as a
Gelu op in many orders, and the numbers are what matter. A block that looks like an FFN but
cannot be taken is reported as a miss with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from sparsec.layers import Layer, trace_weight
from sparsec.passes.moe.activations import ACTIVATIONS

# Ops that act on each element (with scalar constants) and may appear inside an activation.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Sqrt",
               "Neg", "Exp", "Log", "Softplus", "Reciprocal", "Abs"}
NONLINEAR = {"Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Softplus", "Exp", "Pow", "Log"}
# Ops that do not change element values (Reshape only where it keeps the last axis).
PASS_THROUGH = {"Identity", "Reshape", "Cast", "Dropout"}
_STD = ("", "ai.onnx")
_RESIDUAL_DEPTH = 24  # nodes searched above the FFN input for the residual's source


@dataclass
class Projection:
    """One linear layer of an FFN: `output = input @ weight (+ bias)`, weight as [K, N]."""

    node: ir.Node
    layer: Layer
    weight: np.ndarray  # [K, N]
    bias: np.ndarray | None  # [N]
    input: ir.Value  # before any flattening Reshape
    output: ir.Value  # after the bias and any restoring Reshape

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass
class FFN:
    up: Projection  # the first layer (for gated FFNs: the 'up' branch, multiplied in)
    down: Projection
    activation: str
    gate: Projection | None = None  # gated FFNs: act(gate(x)) * up(x)
    residual: ir.Node | None = None  # the Add that adds the block's input back
    nodes: list[ir.Node] = field(default_factory=list)  # the activation subgraph

    @property
    def name(self) -> str:
        return self.down.name

    @property
    def input(self) -> ir.Value:
        return self.up.input

    @property
    def output(self) -> ir.Value:
        return self.down.output

    @property
    def dim(self) -> int:
        return int(self.up.weight.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.up.weight.shape[1])

    @property
    def first(self) -> Projection:
        """The projection whose output goes through the activation (neurons are its columns)."""
        return self.gate if self.gate is not None else self.up

    def describe(self) -> dict:
        return {
            "activation": self.activation,
            "gated": self.gate is not None,
            "dim": self.dim,
            "hidden": self.hidden,
            "up": self.up.layer.weight.name,
            "gate": self.gate.layer.weight.name if self.gate is not None else None,
            "down": self.down.layer.weight.name,
            "residual": self.residual.name if self.residual is not None else None,
        }


@dataclass(frozen=True)
class Miss:
    layer: str
    reason: str


class _Reject(Exception):
    pass


def _std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.domain in _STD and node.op_type in ops


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    p = value.producer()
    if _std(p, "Constant") and "value" in p.attributes:
        return p.attributes["value"].as_tensor().numpy()
    if _std(p, "Identity"):  # legacy exports alias shared initializers through Identity
        return _const(p.inputs[0])
    return None


def _last_dim(value: ir.Value) -> int | None:
    if value.shape is None or len(value.shape) == 0:
        return None
    d = value.shape[-1]
    return d if isinstance(d, int) else None


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _keeps_last(node: ir.Node, n: int) -> bool:
    """A Reshape/Identity/Cast whose output still has `n` as its last axis (or unknown rank)."""
    if node.op_type == "Reshape":
        shape = _const(node.inputs[1])
        return shape is not None and shape.size > 0 and int(shape.reshape(-1)[-1]) in (n, -1)
    if node.op_type == "Cast":
        to = node.attributes.get("to")
        return to is not None and to.as_int() == ir.DataType.FLOAT
    return True


def _projection_of(value: ir.Value) -> Projection | None:
    """The up/down projection `value` comes out of (bias Add and Reshapes included), if any."""
    bias_arr: np.ndarray | None = None
    v = value
    for _ in range(6):
        p = v.producer()
        if p is None:
            return None
        if _std(p, "Reshape", "Identity"):
            v = p.inputs[0]
            continue
        if _std(p, "Add") and bias_arr is None:
            a, b = p.inputs
            ca, cb = _const(a), _const(b)
            if (ca is None) == (cb is None):
                return None
            bias_arr, v = (ca, b) if ca is not None else (cb, a)
            continue
        if _std(p, "MatMul", "Gemm"):
            return _make_projection(p, bias_arr, value)
        return None
    return None


def _make_projection(node: ir.Node, extra_bias: np.ndarray | None, output: ir.Value) -> Projection | None:
    layer = trace_weight(node)
    if layer is None:
        return None
    w = layer.weight.const_value.numpy()
    if w.ndim != 2 or w.dtype != np.float32:
        return None
    w_kn = w if layer.reduction_axis == 0 else w.T
    bias = None
    if node.op_type == "Gemm":
        attrs = {k: v.value for k, v in node.attributes.items()}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = _const(node.inputs[2])
            if bias is None:
                return None
    for b in (bias, extra_bias):
        if b is not None and b.size != w_kn.shape[1]:
            return None
    if bias is not None and extra_bias is not None:
        bias = bias.reshape(-1) + extra_bias.reshape(-1)
    else:
        bias = bias if bias is not None else extra_bias
    # Every value from the layer to `output` must feed only the next step.
    v = node.outputs[0]
    while v is not output:
        user = _single_use(v)
        if user is None:
            return None
        if user.op_type == "Reshape" and not _keeps_last(user, w_kn.shape[1]):
            return None
        v = user.outputs[0]
    x = node.inputs[0]
    while _std(x.producer(), "Reshape") and _last_dim(x.producer().inputs[0]) == w_kn.shape[0] \
            and _single_use(x) is not None:
        x = x.producer().inputs[0]
    return Projection(node, layer, np.ascontiguousarray(w_kn, dtype=np.float32),
                      None if bias is None else bias.reshape(-1).astype(np.float32), x, output)


def _down_output(node: ir.Node, n: int) -> tuple[ir.Value, np.ndarray | None]:
    """The down projection's output after its bias Add and restoring Reshape."""
    v, bias = node.outputs[0], None
    for _ in range(4):
        user = _single_use(v)
        if user is None:
            break
        if _std(user, "Reshape", "Identity") and _keeps_last(user, n):
            v = user.outputs[0]
            continue
        if _std(user, "Add") and bias is None:
            other = user.inputs[1] if user.inputs[0] is v else user.inputs[0]
            c = _const(other)
            if c is not None and c.size == n:
                bias, v = c.reshape(-1), user.outputs[0]
                continue
        break
    return v, bias


def _walk(start: ir.Value) -> tuple[list[ir.Node], dict[str, Projection], bool]:
    """Nodes between the down projection's input and the up projections, and those
    projections by the value they produce. Raises _Reject with a reason."""
    region: dict[int, ir.Node] = {}
    sources: dict[str, Projection] = {}
    seen_nonlinear = False
    problems: list[str] = []
    stack = [start]
    visited: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in visited:
            continue
        visited.add(id(v))
        c = _const(v)
        if c is not None:
            if c.size != 1 and not problems:  # keep walking: is this an FFN at all?
                problems.append(f"non-scalar constant '{v.name}' inside the activation")
            continue
        proj = _projection_of(v)
        if proj is not None:
            sources[v.name] = proj
            continue
        p = v.producer()
        if p is None:
            raise _Reject(f"reaches graph input '{v.name}' without an up projection")
        if p.domain not in _STD or (p.op_type not in ELEMENTWISE and p.op_type not in PASS_THROUGH):
            raise _Reject(f"{p.domain + '.' if p.domain else ''}{p.op_type} '{p.name}' between the projections"
                          + (" (seen an activation)" if seen_nonlinear else ""), )
        seen_nonlinear |= p.op_type in NONLINEAR
        region[id(p)] = p
        # A Reshape's shape input is not data.
        stack.extend(x for x in (p.inputs[:1] if p.op_type in PASS_THROUGH else p.inputs) if x is not None)
    if problems and seen_nonlinear:
        raise _Reject(problems[0] + " (seen an activation)")
    return list(region.values()), sources, seen_nonlinear


def _eval_region(nodes: list[ir.Node], feeds: dict[str, np.ndarray], out: ir.Value) -> np.ndarray:
    from scipy.special import erf

    env = dict(feeds)

    def get(v: ir.Value) -> np.ndarray:
        if v.name in env:
            return env[v.name]
        c = _const(v)
        return c.astype(np.float64).reshape(())

    unary = {"Erf": erf, "Tanh": np.tanh, "Sigmoid": lambda a: 1 / (1 + np.exp(-a)),
             "Relu": lambda a: np.maximum(a, 0), "Sqrt": np.sqrt, "Neg": np.negative, "Exp": np.exp,
             "Log": np.log, "Softplus": lambda a: np.logaddexp(0, a), "Reciprocal": lambda a: 1 / a,
             "Abs": np.abs}
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}
    order = {id(n): i for i, n in enumerate(nodes[0].graph)} if nodes else {}
    with np.errstate(all="ignore"):
        for node in sorted(nodes, key=lambda n: order[id(n)]):
            op = node.op_type
            if op in PASS_THROUGH:
                r = get(node.inputs[0])
            elif op in unary:
                r = unary[op](get(node.inputs[0]))
            elif op in binary:
                r = binary[op](get(node.inputs[0]), get(node.inputs[1]))
            elif op == "Gelu":
                approx = node.attributes.get("approximate")
                fn = ACTIVATIONS["gelu_tanh" if approx is not None and approx.as_string() == "tanh" else "gelu"]
                r = fn(get(node.inputs[0]))
            else:  # pragma: no cover  (_walk admits only the ops above)
                raise _Reject(f"cannot evaluate {op}")
            env[node.outputs[0].name] = np.asarray(r, dtype=np.float64)
    return get(out)


def _classify(fn_values: np.ndarray, grid: np.ndarray) -> str | None:
    best, err = None, np.inf
    for name, fn in ACTIVATIONS.items():
        ref = fn(grid)
        e = float(np.max(np.abs(fn_values - ref)) / max(1.0, float(np.max(np.abs(ref)))))
        if e < err:
            best, err = name, e
    return best if err < 1e-4 else None


_GRID = np.linspace(-6.0, 6.0, 241)


def _match(down_node: ir.Node) -> FFN | Miss | None:
    """An FFN ending in `down_node`, a Miss with the reason, or None (not FFN-like at all)."""
    down = _make_projection(down_node, None, down_node.outputs[0])
    if down is None:
        return None
    try:
        nodes, sources, nonlinear = _walk(down_node.inputs[0])
    except _Reject as e:
        reason = str(e)
        return Miss(down.name, reason.replace(" (seen an activation)", "")) if "(seen an activation)" in reason else None
    name = down.name
    if not sources:
        return None
    if not nodes or not nonlinear:
        return None  # two linear layers in a row (e.g. a low-rank factorisation), not an FFN
    ups = list(sources.values())
    if len(ups) > 2:
        return Miss(name, f"{len(ups)} projections feed the activation (at most 2: gate and up)")
    if len({id(p.input) for p in ups}) != 1:
        return Miss(name, "the projections before the activation take different inputs")
    hidden = down.weight.shape[0]
    if any(p.weight.shape[1] != hidden for p in ups):
        return Miss(name, f"up projection width {[p.weight.shape[1] for p in ups]} != down input {hidden}")
    # Region outputs may only feed the region (or, for the last one, the down projection).
    inside = {id(n) for n in nodes}
    for n in nodes:
        for o in n.outputs:
            users = [u for u, _ in o.uses()]
            if o is down_node.inputs[0]:
                if o.is_graph_output() or len(users) != 1:
                    return Miss(name, f"the activation output '{o.name}' has other users")
            elif o.is_graph_output() or any(id(u) not in inside for u in users):
                return Miss(name, f"'{o.name}' inside the activation is used outside the FFN")
    for v_name, p in sources.items():
        if p.output.is_graph_output() or any(id(u) not in inside for u, _ in p.output.uses()):
            return Miss(name, f"up projection output '{v_name}' is used outside the FFN")
    gate = None
    if len(ups) == 1:
        got = _eval_region(nodes, {ups[0].output.name: _GRID}, down_node.inputs[0])
        act = _classify(np.broadcast_to(got, _GRID.shape), _GRID)
        if act is None:
            return Miss(name, "activation is none of " + ", ".join(ACTIVATIONS))
        up = ups[0]
    else:
        rng = np.random.default_rng(0)
        other = rng.uniform(-3, 3, _GRID.shape)
        act = None
        for g, u in ((ups[0], ups[1]), (ups[1], ups[0])):
            got = _eval_region(nodes, {g.output.name: _GRID, u.output.name: other}, down_node.inputs[0])
            act = _classify(np.broadcast_to(got, _GRID.shape) / other, _GRID)
            if act is not None:
                gate, up = g, u
                break
        if act is None:
            return Miss(name, "gated activation is not act(gate) * up with act in " + ", ".join(ACTIVATIONS))
    out, bias = _down_output(down_node, down.weight.shape[1])
    down.output, down.bias = out, None if bias is None else bias.astype(np.float32)
    if down.node.op_type == "Gemm" and len(down_node.inputs) > 2 and down_node.inputs[2] is not None:
        c = _const(down_node.inputs[2]).reshape(-1).astype(np.float32)
        down.bias = c if down.bias is None else down.bias + c
    in_shape, out_shape = up.input.shape, out.shape
    if in_shape is not None and out_shape is not None and len(in_shape) != len(out_shape):
        return Miss(name, f"FFN input rank {len(in_shape)} != output rank {len(out_shape)}")
    return FFN(up=up, down=down, activation=act, gate=gate, residual=_residual(up.input, out), nodes=nodes)


def _residual(x: ir.Value, y: ir.Value) -> ir.Node | None:
    """The Add that sums the FFN output with its input or an ancestor of it (pre-norm)."""
    ancestors: set[int] = {id(x)}
    frontier = [x]
    count = 0
    while frontier and count < _RESIDUAL_DEPTH:
        v = frontier.pop(0)
        p = v.producer()
        if p is None:
            continue
        count += 1
        for i in p.inputs:
            if i is not None and _const(i) is None and id(i) not in ancestors:
                ancestors.add(id(i))
                frontier.append(i)
    for user, index in y.uses():
        if _std(user, "Add") and len(user.inputs) == 2:
            other = user.inputs[1 - index]
            if other is not None and id(other) in ancestors:
                return user
    return None


def find_ffns(model: ir.Model) -> tuple[list[FFN], list[Miss]]:
    """Every FFN block of the main graph, and the FFN-like blocks that were not taken (why)."""
    found: list[FFN] = []
    misses: list[Miss] = []
    for node in list(model.graph):
        if not _std(node, "MatMul", "Gemm"):
            continue
        got = _match(node)
        if isinstance(got, FFN):
            found.append(got)
        elif isinstance(got, Miss):
            misses.append(got)
    return found, misses
