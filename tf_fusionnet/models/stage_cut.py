"""Where a multi-exit model is cut into stages, one per exit, for cascades and cost counts.

Stage k (0-based) is every graph node that exit k needs and no earlier stage computed, plus what
the model's ``stage_targets(k)`` adds (MSDNet and FusionNet compute block k at every scale before
exit k answers; RANet adds nothing). Nothing else is assumed about the architecture: a stage
hands over *every* tensor that a later stage reads, whichever earlier stage made it. RANet's flows
read the previous flow's maps from several stages back, so "the state after block k" is not
enough there.

Hand-off tensors are named ``state_0``, ``state_1``, ... once for the whole model, in graph order;
the image is ``image`` and every exit's logits ``logits``. A runner keeps a pool of named tensors:
stage k reads its inputs from the pool and adds its outputs to it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import keras


def node_of(tensor):
    """The graph node that produced a symbolic Keras tensor."""
    op, node_index, _ = tensor._keras_history
    return op._inbound_nodes[node_index]


def ancestor_nodes(tensors: Iterable) -> dict[int, object]:
    """Every graph node needed to compute ``tensors``, keyed by ``id``."""
    seen: dict[int, object] = {}
    stack = list(tensors)
    while stack:
        node = node_of(stack.pop())
        if id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(node.input_tensors)
    return seen


def stage_targets(model: keras.Model, k: int) -> list:
    """What stage ``k`` must compute: exit ``k`` and the model's extra targets for it."""
    extra = model.stage_targets(k) if hasattr(model, "stage_targets") else []
    return [model.outputs[k]] + list(extra)


@dataclasses.dataclass
class StageCut:
    """A model cut into one stage per exit.

    Attributes:
        nodes: per stage, its graph nodes keyed by ``id``.
        inputs: per stage, the symbolic tensors it reads from earlier stages (or the image).
        outputs: per stage, its exit's logits followed by the tensors later stages read.
        input_names, output_names: the same, by name (``image``, ``logits``, ``state_i``).
    """

    nodes: list[dict[int, object]]
    inputs: list[list]
    outputs: list[list]
    input_names: list[list[str]]
    output_names: list[list[str]]


def _graph_order(model: keras.Model) -> dict[int, int]:
    """A topological position for every node (depth-first from the outputs, inputs first)."""
    order: dict[int, int] = {}
    for output in model.outputs:
        stack = [(node_of(output), False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in order:
                continue
            if expanded:
                order[id(node)] = len(order)
                continue
            stack.append((node, True))
            for t in reversed(list(node.input_tensors)):
                if id(node_of(t)) not in order:
                    stack.append((node_of(t), False))
    return order


def cut_stages(model: keras.Model, exits: Sequence[int] | None = None) -> StageCut:
    """Cuts ``model`` into stages (see the module docstring).

    Args:
        model: a functional multi-exit model.
        exits: 0-based indices of the exits to keep, increasing (None: all). Stage k then ends at
            exit ``exits[k]``; the heads of the exits left out are not computed at all, and their
            blocks join the next kept exit's stage (fewer stage boundaries, fewer exit heads).

    Example:
    ```python
    cut = cut_stages(build_model("ranet-cifar"))
    cut.input_names[2]   # what stage 3 reads: maps from stages 1 and 2
    ```
    """
    kept = list(range(len(model.outputs))) if exits is None else list(exits)
    num_exits = len(kept)
    stage_of: dict[int, int] = {}
    nodes: list[dict[int, object]] = []
    for k, exit_index in enumerate(kept):
        new = {i: n for i, n in ancestor_nodes(stage_targets(model, exit_index)).items() if i not in stage_of}
        for i in new:
            stage_of[i] = k
        nodes.append(new)

    image = model.inputs[0]
    image_node = id(node_of(image))
    handed: dict[int, tuple[object, int]] = {}  # id(tensor) -> (tensor, producing stage)
    readers: dict[int, set[int]] = {}
    for k, stage_nodes in enumerate(nodes):
        for node in stage_nodes.values():
            for t in node.input_tensors:
                producer = stage_of[id(node_of(t))]
                if producer < k or id(node_of(t)) == image_node:
                    handed[id(t)] = (t, producer)
                    readers.setdefault(id(t), set()).add(k)

    order = _graph_order(model)

    def position(t):
        op, _, tensor_index = t._keras_history
        return order[id(node_of(t))], tensor_index

    names: dict[int, str] = {id(image): "image"}
    for t, _ in sorted((v for i, v in handed.items() if i != id(image)), key=lambda v: position(v[0])):
        names[id(t)] = f"state_{len(names) - 1}"

    inputs, outputs = [], []
    for k in range(num_exits):
        reads = [t for i, (t, p) in handed.items() if k in readers[i] and (p < k or i == id(image))]
        if k == 0:
            reads = [image]
        reads.sort(key=lambda t: (names[id(t)] != "image", position(t)))
        inputs.append(reads)
        made = [t for i, (t, p) in handed.items() if p == k and i != id(image) and max(readers[i]) > k]
        made.sort(key=position)
        outputs.append([model.outputs[kept[k]]] + made)
    return StageCut(
        nodes=nodes,
        inputs=inputs,
        outputs=outputs,
        input_names=[[names[id(t)] for t in ts] for ts in inputs],
        output_names=[["logits"] + [names[id(t)] for t in ts[1:]] for ts in outputs],
    )
