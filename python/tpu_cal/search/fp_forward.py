"""fp_forward ("local non-quantization", seed 002): whole regions of a model kept in float, chosen by op name.

    fp_layers(graph, inputs=["a"], outputs=["b"], blocks=[(["c"], ["d"])]) -> op names in graph order

- `inputs`: each named op and every op it depends on (its whole backward cone: pre-processing);
- `outputs`: each named op and every op that depends on it (its forward cone: post-processing);
- `blocks`: ops downstream of a start (inclusive) and upstream of an end (inclusive) — the ops on a path from
  start to end. A start or end may list several names (`a,b:c`), as TPU-MLIR accepts.

Only ops whose result is a real-valued tensor are returned: integer and boolean results (indices, masks) never
take a quantized type, so a qtable entry for them would change nothing. Unknown names raise one UserError listing
each with its closest existing names; a block with nothing between its ends is an error naming the block.
"""
from __future__ import annotations

from ..errors import UserError
from ..graph import Graph
from ..lowering import _closest, is_float

NOT_OPS = ("top.weight", "top.none")


def ancestors(graph: Graph, names) -> set[str]:
    """The ops `names` depend on, including themselves (weights excluded)."""
    nodes = graph.node_map()
    seen: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in seen or n is None or nodes[n].op in NOT_OPS:
            continue
        seen.add(n)
        stack.extend(i for i in nodes[n].inputs if i is not None)
    return seen


def descendants(graph: Graph, names, users=None) -> set[str]:
    """The ops that depend on `names`, including themselves."""
    users = users or graph.users()
    seen: set[str] = set()
    stack = list(names)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(u.name for u in users[n])
    return seen


def check_names(graph: Graph, names, flag: str) -> None:
    """UserError naming every entry of `names` that is no op of the graph, with the closest names."""
    pool = {n.name for n in graph.nodes if n.op not in NOT_OPS}
    bad = [n for n in names if n not in pool]
    if bad:
        raise UserError(f"{flag}: {len(bad)} name(s) not in the module: "
                        + "; ".join(f"'{b}'{_closest(b, pool)}" for b in bad[:10])
                        + (f"; and {len(bad) - 10} more" if len(bad) > 10 else ""))


def parse_names(text: str, flag: str) -> list[str]:
    names = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in names):
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of op names (an empty name)")
    return names


def parse_blocks(text: str) -> list[tuple[list[str], list[str]]]:
    """'a:b c,d:e' -> [(['a'], ['b']), (['c', 'd'], ['e'])]; blocks are separated by spaces (or ';')."""
    out = []
    for block in text.replace(";", " ").split():
        start, sep, end = block.partition(":")
        if not sep or ":" in end:
            raise UserError(f"--fpfwd_blocks: '{block}' is not 'start:end' (start and end op names separated by "
                            f"one colon; blocks separated by spaces)")
        out.append((parse_names(start, f"--fpfwd_blocks '{block}' start"),
                    parse_names(end, f"--fpfwd_blocks '{block}' end")))
    if not out:
        raise UserError("--fpfwd_blocks: no block given (expected 'start:end [start:end ...]')")
    return out


def fp_layers(graph: Graph, inputs=(), outputs=(), blocks=()) -> tuple[list[str], list[list]]:
    """(op names to keep in float, in graph order; one report row per request: kind, names, ops selected)."""
    check_names(graph, list(inputs), "--fpfwd_inputs")
    check_names(graph, list(outputs), "--fpfwd_outputs")
    for k, (s, e) in enumerate(blocks):
        check_names(graph, s + e, f"--fpfwd_blocks block {k + 1}")
    nodes = graph.node_map()
    users = graph.users()
    chosen: set[str] = set()
    rows = []

    def real(names):
        return {n for n in names if nodes[n].op != "top.input" and is_float(nodes[n])}

    for name in inputs:
        sel = real(ancestors(graph, [name]))
        rows.append(["inputs", name, len(sel)])
        chosen |= sel
    for name in outputs:
        sel = real(descendants(graph, [name], users))
        rows.append(["outputs", name, len(sel)])
        chosen |= sel
    for s, e in blocks:
        between = descendants(graph, s, users) & ancestors(graph, e)
        label = f"{','.join(s)}:{','.join(e)}"
        if not between:
            raise UserError(f"--fpfwd_blocks '{label}': empty block, no end op is downstream of a start op "
                            f"(is the order reversed?)")
        sel = real(between)
        rows.append(["block", label, len(sel)])
        chosen |= sel
    return [n.name for n in graph.nodes if n.name in chosen], rows


def write_float_qtable(path: str, names, mode: str, chip_name: str, notes=()) -> None:
    """A qtable putting every op of `names` in `mode`, with TPU-MLIR's header; written atomically."""
    import datetime

    from ..fileio import write_text
    from ..formats.qtable import format_qtable
    names = list(names)
    head = [f"# genetated time: {datetime.datetime.now()}", f"# chip: {chip_name}  mix_mode: {mode}",
            f"# number of {mode} layer: {len(names)}", *(f"# {n}" for n in notes), "###"]
    write_text(path, "\n".join(head) + "\n" + format_qtable({n: mode for n in names}))
