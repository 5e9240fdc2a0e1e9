"""Task-aware mixture-of-experts (TA-MoE): layer, routing session, upcycling.

    from utamoe.moe import MoEConfig, TaskAwareMoE, route, upcycle
    model = upcycle(hf_causal_lm, MoEConfig())          # dense MLPs -> TA-MoE, same logits
    with route(model, task_labels=labels) as session:   # labels: (B,) or (B, S) group ids
        loss = model(**batch).loss + session.aux_loss()
        loss.backward()

Model code here is plain single-device PyTorch; distribution lives in utamoe.train.
"""

from utamoe.moe.config import MoEConfig
from utamoe.moe.context import RoutedModule, RoutingSession, route
from utamoe.moe.layer import TaskAwareMoE
from utamoe.moe.upcycle import UnsupportedArchitectureError, moe_layers, upcycle

__all__ = [
    "MoEConfig",
    "RoutedModule",
    "RoutingSession",
    "TaskAwareMoE",
    "UnsupportedArchitectureError",
    "moe_layers",
    "route",
    "upcycle",
]
