"""Hook sites written out by hand for the tests, independently of acd.patching's own map."""

from __future__ import annotations


def destination_point(model, port) -> tuple[str, int | None]:
    """(hook name, index along the head / key-value-group axis or None) where ``port`` reads."""
    if port.kind == "q":
        return model.hook_q_input(port.layer), port.index
    if port.kind == "k":
        return model.hook_k_input(port.layer), port.index
    if port.kind == "v":
        return model.hook_v_input(port.layer), port.index
    if port.kind == "mlp":
        return model.hook_mlp_in(port.layer), None
    return model.hook_final_resid(), None
