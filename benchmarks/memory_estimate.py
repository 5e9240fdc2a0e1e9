"""Memory per device of the Janus-Pro UTAMoE recipe (configs/janus_pro_utamoe.yaml), from the
architectures' configs: parameters, gradients, AdamW state and activations at the configured
batch, for Janus-Pro-1B and -7B, per stage, with and without LoRA, with and without activation
checkpointing, unsharded (DDP) and sharded over N devices (ZeRO-2, ZeRO-3 / FSDP).

    python benchmarks/memory_estimate.py                      # the table in docs/scaling.md
    python benchmarks/memory_estimate.py --janus /models/Janus-Pro-7B --devices 8 --batch 4
    python benchmarks/memory_estimate.py --set stages.1.moe.expert_type=lora   # LoRA experts

Parameter counts are exact: the model is built on the meta device (no memory) with utamoe's own
code from the Janus config, and each stage's surgery (split_ffn, upcycle to TA-MoE), LoRA and
trainable globs are applied as the trainer applies them. The built-in configs are the language
models of Janus-Pro-1B / -7B's config.json (deepseek-ai/Janus-Pro-*) with transformers'
JanusConfig defaults for the SigLIP-L/16 tower and the VQ-16 codec (Janus-Pro's); `--janus DIR`
reads a local config.json instead. Memory is in GiB:
- weights: fp32 master weights (the trainer keeps fp32 and autocasts to bf16);
- gradients: fp32, trainable parameters only; AdamW: two fp32 moments per trainable parameter;
- activations (bf16 under autocast, what autograd keeps for backward), per decoder layer and
  token: the input norm's input and output, q/k/v, the attention output (FlashAttention-style
  kernels keep no S x S scores), the MLP's norm input and output, and per *active* FFN (top-k
  routed + shared experts; 1 for a dense or task-split FFN) its input, gate, up and gated
  product; plus the fp32 logits of the scored tokens (text answers over the vocabulary, image
  codes over the codebook). With checkpointing only each layer's fp32 input is kept, plus one
  layer's activations during its recompute. The frozen SigLIP tower and VQ run without autograd.
Not counted: the CUDA context and allocator slack (add ~1-2 GiB), temporary buffers of the
optimiser step, and communication buffers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from types import SimpleNamespace

import torch

GIB = 2**30

# The language models of Janus-Pro's config.json (DeepSeek-LLM 1.5B / 7B layouts).
JANUS_PRO_TEXT = {
    "Janus-Pro-1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=16, vocab_size=102400),
    "Janus-Pro-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=102400),
}


def janus_hf_config(name: str | None, path: str | None):
    from transformers import JanusConfig

    if path is not None:
        return JanusConfig.from_pretrained(path)
    text = dict(model_type="llama", max_position_embeddings=16384, **JANUS_PRO_TEXT[name])
    d = text["hidden_size"]
    return JanusConfig(text_config=text, vision_config=dict(projection_dim=d),
                       vq_config=dict(projection_dim=d, image_token_embed_dim=d),
                       tie_word_embeddings=False)  # DeepSeek-LLM keeps a separate lm_head


def stage_models(hf_cfg, recipe):
    """(stage name, model after that stage's surgery/LoRA/globs) for each stage, on meta."""
    from utamoe.model.janus import janus_config
    from utamoe.model.unified import UnifiedModel
    from utamoe.train.stages import add_lora, apply_surgery, merge_lora, select_trainable

    ucfg = dataclasses.replace(janus_config(SimpleNamespace(config=hf_cfg)), und_slot_id=1)
    with torch.device("meta"):
        model = UnifiedModel.build(copy.deepcopy(ucfg))
        for stage in recipe.stages:
            apply_surgery(model, stage.surgery, stage.moe)
            if stage.lora is not None:
                add_lora(model, stage.lora.rank, stage.lora.alpha, stage.lora.targets)
            select_trainable(model, stage.trainable, stage.frozen)
            yield stage, model
            if stage.lora is not None:
                merge_lora(model)


def counts(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def codec_params(hf_cfg) -> int:
    """The frozen VQ codec's parameters (utamoe's VQTokenizer holds Janus's, one to one)."""
    from transformers.models.janus.modeling_janus import JanusVQVAE

    with torch.device("meta"):
        return sum(p.numel() for p in JanusVQVAE(hf_cfg.vq_config).parameters())


def stage_counts(hf_cfg, recipe):
    """(stage, total parameters with the codec, trainable parameters) for each stage."""
    codec = codec_params(hf_cfg)
    for stage, model in stage_models(hf_cfg, recipe):
        total, trainable = counts(model)
        yield stage, total + codec, trainable


def activation_bytes(hf_cfg, stage, batch: int, seq: int, ckpt: bool) -> float:
    t = hf_cfg.text_config
    d, f, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    kv = t.num_key_value_heads * (d // t.num_attention_heads)
    moe = stage.moe if "upcycle" in stage.surgery else None
    active = 1 if moe is None else moe.top_k + moe.num_shared_experts
    per_token = 4 * d + d + 2 * kv + active * (d + 3 * f)  # elements, see the module docstring
    layer = batch * seq * per_token * 2  # bf16
    kept = layers * batch * seq * d * 4 + layer if ckpt else layers * layer
    # Scored tokens: half the rows understanding (~12 answer tokens), half generation (576 codes).
    text_targets, code_targets = batch / 2 * 12, batch / 2 * hf_cfg.vq_config.num_patches ** 2
    logits = (text_targets * t.vocab_size + code_targets * hf_cfg.vq_config.num_embeddings) * 4 * 2
    return kept + logits


def rows(name, hf_cfg, recipe, batch, seq, devices):
    out = []
    variants = [("LoRA r16 (recipe)", recipe), ("full fine-tuning", full_ft(recipe))]
    for label, rec in variants:
        for stage, total, trainable in stage_counts(hf_cfg, rec):
            if label != variants[0][0] and stage.lora is None and stage is rec.stages[0]:
                continue  # stage 1 has no LoRA: the same row as the recipe's
            w, g, opt = total * 4, trainable * 4, trainable * 8
            act = {ck: activation_bytes(hf_cfg, stage, batch, seq, ck) for ck in (True, False)}
            ddp = w + g + opt + act[True]
            zero2 = w + (g + opt) / devices + act[True]
            zero3 = (w + g + opt) / devices + act[True]
            out.append([name, stage.name, label if stage.lora is not None or "upcycle" in stage.surgery
                        else "-", f"{total / 1e9:.2f}B", f"{trainable / 1e9:.2f}B",
                        *(f"{x / GIB:.1f}" for x in (w, g, opt, act[True], act[False], ddp,
                                                     zero2, zero3))])
    return out


def full_ft(recipe):
    rec = copy.deepcopy(recipe)
    for st in rec.stages:
        if st.lora is not None:
            st.lora, st.trainable = None, []
    return rec


def main(argv=None) -> None:
    from utamoe.train.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--janus", help="a local Janus directory (its config.json); default: the "
                                    "built-in Janus-Pro-1B and -7B configs")
    ap.add_argument("--batch", type=int, default=None, help="micro-batch per device (default: "
                                                             "the recipe's train.batch_size)")
    ap.add_argument("--seq", type=int, default=640, help="tokens per sample (576 features or codes "
                                                          "+ prompt and answer)")
    ap.add_argument("--devices", type=int, default=8, help="N for the sharded columns")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides, as for `utamoe train` (e.g. stages.1.moe.num_experts=4)")
    args = ap.parse_args(argv)
    recipe = load_config("janus_pro_utamoe", args.set)
    batch = args.batch or recipe.train.batch_size
    models = [(args.janus, None)] if args.janus else [(n, n) for n in JANUS_PRO_TEXT]
    head = ["model", "stage", "variant", "params", "trainable", "weights", "grads", "AdamW",
            "act (ckpt)", "act (no ckpt)", "DDP total", f"ZeRO-2 x{args.devices}",
            f"ZeRO-3/FSDP x{args.devices}"]
    table = []
    for label, name in models:
        table += rows(label, janus_hf_config(name, args.janus), recipe, batch, args.seq, args.devices)
    print(f"# micro-batch {batch} x {args.seq} tokens per device; GiB; totals with checkpointing")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
