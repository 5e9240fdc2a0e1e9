"""Task-aware mixture-of-experts (TA-MoE): layer, routing session, upcycling.

    from utamoe.moe import MoEConfig, TaskAwareMoE, route, upcycle
    model = upcycle(hf_causal_lm, MoEConfig())          # dense MLPs -> TA-MoE, same logits
    with route(model, task_labels=labels) as session:   # labels: (B,) or (B, S) group ids
        loss = model(**batch).loss + session.aux_loss()
        loss.backward()

MoME's MoLE (routed bottleneck adapters beside each FFN, routed on the instruction):
    add_mole(hf_causal_lm, MoLEConfig(), instance_dim=De)  # before or after upcycle()
    with route(model, instances=emb_BDe) as session: ...

Model code here is plain single-device PyTorch; distribution lives in utamoe.train.
"""

from utamoe.moe.blocks import UnsupportedArchitectureError
from utamoe.moe.config import MoEConfig
from utamoe.moe.context import RoutedModule, RoutingSession, route
from utamoe.moe.layer import TaskAwareMoE
from utamoe.moe.mole import AdapterExperts, MoLEConfig, MoLELayer, add_mole, mole_layers
from utamoe.moe.upcycle import moe_layers, upcycle

__all__ = [
    "AdapterExperts",
    "MoEConfig",
    "MoLEConfig",
    "MoLELayer",
    "RoutedModule",
    "RoutingSession",
    "TaskAwareMoE",
    "UnsupportedArchitectureError",
    "add_mole",
    "moe_layers",
    "mole_layers",
    "route",
    "upcycle",
]
