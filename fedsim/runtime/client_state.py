"""A client's private state between rounds, kept with its uploads so a restarted actor continues
exactly where it was.

Every round starts from the parameter server's copy of the client's model, so the parameters
need no saving. What a round also carries over is: the optimiser's state (Adam's moments and
step count), the model's buffers (BatchNorm's running statistics) and whatever the method
object keeps between rounds (CMMC's pseudo-targets, FedOpt's server moments). The round's
random draws are seeded from (seed, client, round), so they need no saving either.

``capture`` turns that state into a tree of numpy arrays (Ray passes those zero-copy) and
``restore`` puts it back; tensors are copied on the way back, as the arrays Ray hands out are
read-only. ``seq`` counts the rounds a client has trained: the actor compares its own count with
the state's and restores only when they differ (after a restart, or after a round whose upload
was never committed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorBox(value.detach().cpu().numpy())
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_numpy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    return value


def _to_torch(value: Any, device: torch.device) -> Any:
    if isinstance(value, _TensorBox):
        return torch.from_numpy(np.array(value.array, copy=True)).to(device)
    if isinstance(value, dict):
        return {k: _to_torch(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_torch(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_torch(v, device) for v in value)
    return value


class _TensorBox:
    """A tensor as a numpy array (zero-copy in Ray's object store), marked so it comes back as
    a tensor and not as the array a method may also keep."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return (_TensorBox, (self.array,))


def capture(seq: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: Any) -> dict[str, Any]:
    """The client's state after its ``seq``-th round (numpy copies; nothing aliases the live tensors
    once Ray has serialised the returned value)."""
    return {
        "seq": seq,
        "optimizer": _to_numpy(optimizer.state_dict()),
        "buffers": {name: _to_numpy(b) for name, b in model.named_buffers()},
        "method": _to_numpy(dict(vars(method))),
    }


def restore(
    state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, method: Any, device: torch.device
) -> None:
    optimizer.load_state_dict(_to_torch(state["optimizer"], device))
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in state["buffers"].items():
            buffers[name].copy_(_to_torch(value, device))
    vars(method).update(_to_torch(state["method"], device))
