"""Which per-adapter stores a grown layer fills: one definition, for the layers and for `peft-grow inspect`.

A grown layer keeps each adapter's tensors in stores keyed by adapter name: the ParameterDicts of trained tensors
(`GrowLayer.adapter_layer_names`, plus `grow_new_down_weight` in an experts layer) and the BufferDict `grow_noise`
of the frozen symmetry noise. Which of them an adapter fills depends only on the layer's role, the adapter's mode
and init, whether symmetry noise is on, and whether the up side has a bias. `GrowUpLayer.update_layer`,
`GrowDownLayer.update_layer` and the experts' `initial_parts` fill exactly `filled_stores(...)`, and inspection
reads the same function to know what a saved adapter must (and may) hold.
"""

from __future__ import annotations

from .growth import INITS

UP, DOWN, EXPERTS = "up", "down", "experts"
ROLES = (UP, DOWN, EXPERTS)

# an experts layer holds both sides in one module: the down side's new columns get a store of their own
_EXPERTS_DOWN = {"grow_new_weight": "grow_new_down_weight"}


def filled_stores(role: str, mode: str, init: str, *, noise: bool = False, bias: bool = False) -> frozenset[str]:
    """The stores (layer attribute names, `grow_*`) that a grown layer of `role` fills for one adapter.

    Args:
        role: "up" (`GrowUpLayer`, an up-side projection), "down" (`GrowDownLayer`) or "experts"
            (`GrowExpertsLayer`: the up side's stores, and the down side's with its new columns in
            `grow_new_down_weight`).
        mode, init: the adapter's (`GrowConfig.mode`, `GrowConfig.init`).
        noise: the adapter's symmetry_noise is on (> 0). It has a store only where G-Train from copies freezes
            all k down blocks; elsewhere it is added to the new down columns, which are stored anyway.
        bias: the up side has a bias; its new rows (and G-Train delta) then get biases. The down bias is left alone.
    """
    if role == UP:
        filled = {"grow_new_weight"} | ({"grow_new_bias"} if bias else set())
        if mode == "train":  # G-Train trains the original rows through a zero-initialised delta
            filled |= {"grow_delta_weight"} | ({"grow_delta_bias"} if bias else set())
        return frozenset(filled)
    if role == DOWN:
        if mode == "freeze" or INITS[init].trains_new_columns:  # new columns (zero init: trained in either mode)
            return frozenset({"grow_new_weight"})
        return frozenset({"grow_noise"} if noise else ())  # G-Train from copies: the k blocks W_down / k are frozen
    if role == EXPERTS:
        down = filled_stores(DOWN, mode, init, noise=noise)
        return filled_stores(UP, mode, init, bias=bias) | {_EXPERTS_DOWN.get(store, store) for store in down}
    raise ValueError(f"role must be one of {ROLES}, got {role!r}.")
