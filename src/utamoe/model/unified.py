"""UnifiedModel: one autoregressive backbone that reads and writes images (Janus layout + TA-MoE).

    understanding: image -> und_encoder (tower + aligner) -+
    text tokens -> backbone's embedding table -------------+--> backbone (MLPs = TA-MoE) --> lm_head -> text
    image codes -> gen_embed -> gen_aligner ---------------+                            --> gen_head -> codes

`embed` places each kind of input at its positions (see utamoe.data.sequences for
the layouts), `hidden` runs the backbone (with a KV cache when asked), `forward`
computes a mixed-task batch's losses. Task labels for the TA-MoE layers are the
sample's task group, broadcast over its tokens (padding gets -1), so the group
router is supervised by what each sequence is, never guessed from token ids; the
batch's registry group indices are mapped to the MoE config's `group_names` order.
`und_encoder` is any module with the understanding-encoder interface
(utamoe.vision.encoders), MoME's mixture of vision experts included
(utamoe.vision.mixture); the model owns its image processor (`processor`).
MoME's instance-level routers (the MoVE router, MoLE adapters) read one
instruction embedding per sequence (`instance_embeddings`, utamoe.model.instructions):
the forward passes it to the mixture and into the routing session.
`forward` also takes a packed batch (utamoe.data.packing.PackedBatch: several samples per
row): per-sample fields are then indexed per token by `sample_ids`, and the decoder gets
block-diagonal causal attention and per-sample positions (utamoe.model.packed_rows; how it is
told is the call's `attention_mode`); the losses are those of the same samples unpacked.
`forward(batch, every_part=True)` (the trainer passes it under DeepSpeed with several
processes) runs every trainable part on every batch, zero-weighted where the batch has none
of its inputs, so that processes with different task groups run the same modules in the
same order (ZeRO fetches and reduces parameters per module in that order); the values and the
gradients are bit-identical to a forward without it. Modes are arguments of the constructor
(`sentence_encoder`) or of the call, never attributes set on the class from outside.
Model code is single-device PyTorch; distribution lives in utamoe.train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.data.sequences import IGNORE, Batch, Encoder
from utamoe.hf.parts import build_backbone, hidden_size_of
from utamoe.model.config import UnifiedConfig
from utamoe.model.instructions import SentenceEncoder, mean_token_embedding
from utamoe.model.packed_rows import packed_attention, sample_mean_embedding
from utamoe.model.parts import GenHead
from utamoe.moe import MoEConfig, RoutingSession, moe_layers, route, upcycle
from utamoe.moe.context import RoutedModule
from utamoe.moe.mole import add_mole
from utamoe.tasks import GROUPS, group_index, task_names
from utamoe.text.tokenizer import SpecialIds
from utamoe.vision.aligners import MLPAligner
from utamoe.vision.encoders import tower_encoder
from utamoe.vision.mixture import build_mixture
from utamoe.vision.processor import ImageProcessor, pixel_values


@dataclass
class UnifiedOutput:
    loss: torch.Tensor  # und loss + gen loss + router aux loss (what to backpropagate)
    group_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # token-mean CE per group
    task_losses: dict[str, float] = field(default_factory=dict)  # detached, for logs
    moe_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    session: RoutingSession | None = None

    @property
    def moe_stats(self) -> dict:
        """Routing statistics summed over layers (computed on first read: logging only)."""
        return self.session.stats() if self.session is not None else {}


class UnifiedModel(nn.Module):
    def __init__(self, config: UnifiedConfig, lm: nn.Module, lm_head: nn.Module,
                 und_encoder: nn.Module, gen_embed: nn.Embedding, gen_aligner: nn.Module,
                 gen_head: nn.Module, image_tokenizer: nn.Module | None = None,
                 sentence_encoder=None):
        super().__init__()
        self.config = config
        # A frozen utamoe.model.instructions.SentenceEncoder for MoME's instruction embedding
        # (not a weight of the model); None: the mean of the backbone's instruction embeddings.
        self.sentence_encoder = sentence_encoder
        self.lm, self.lm_head = lm, lm_head
        self.und_encoder = und_encoder
        self.gen_embed, self.gen_aligner, self.gen_head = gen_embed, gen_aligner, gen_head
        self.image_tokenizer = image_tokenizer
        if image_tokenizer is not None:
            image_tokenizer.requires_grad_(False).eval()  # a frozen codec, as in Janus

    @classmethod
    def build(cls, config: UnifiedConfig, image_tokenizer: nn.Module | None = None) -> UnifiedModel:
        """Fresh model from configs (`vocab_size`, `num_codes`, `code_grid`, `und_slot_id` set)."""
        for key in ("vocab_size", "num_codes", "code_grid"):
            if getattr(config, key) <= 0:
                raise ValueError(f"UnifiedConfig.{key} must be set (from the tokenizers) before build")
        lm, lm_head = build_backbone(config.backbone, config.vocab_size)
        d = hidden_size_of(lm)
        sentence = None
        if config.sentence_encoder is not None and (config.move is not None or config.mole is not None):
            sentence = _sentence_encoder(config.sentence_encoder)
        instance_dim = sentence.dim if sentence is not None else d
        if config.move is not None:
            und_encoder = build_mixture(config.move, config.image_size, d, config.aligner_depth,
                                        instance_dim, image_tokenizer)
        else:
            und_encoder = tower_encoder(config.vision, config.image_size, d, config.aligner_depth,
                                        config.und_pos2d, config.und_pos2d_init)
        model = cls(
            config, lm, lm_head, und_encoder,
            nn.Embedding(config.num_codes, config.code_embed_dim),
            MLPAligner(config.code_embed_dim, d, config.aligner_depth),
            GenHead(d, config.num_codes, config.gen_head_dim or None),
            image_tokenizer, sentence,
        )
        if config.moe is not None:
            if config.moe.routing == "task_aware":
                group_index(config.moe.group_names, "model.moe.group_names")
            upcycle(model.lm, config.moe)
        if config.mole is not None:
            add_mole(model.lm, config.mole, instance_dim)
        return model

    # ------------------------------------------------------------------ MoME's instruction

    @property
    def needs_instructions(self) -> bool:
        """Whether some router reads the instruction embedding (MoVE router, MoLE instance)."""
        if getattr(self.und_encoder, "needs_instructions", False):
            return True
        mole = self.config.mole
        return mole is not None and mole.routing != "token"

    def instance_embeddings(self, batch: Batch) -> torch.Tensor | None:
        """(B, De) fp32, one instruction embedding per row (None when nothing reads it)."""
        if not self.needs_instructions:
            return None
        device = self.gen_embed.weight.device
        packed = getattr(batch, "sample_ids", None)  # rows of several samples: one per sample
        if self.sentence_encoder is not None:
            if batch.prompts is None:
                raise ValueError("the batch has no instruction texts (Batch.prompts); build it "
                                 "with utamoe.data.sequences.collate")
            return self.sentence_encoder.embed(batch.prompts).to(device)
        if batch.prompt_mask is None:
            raise ValueError("the batch has no instruction positions (Batch.prompt_mask); build "
                             "it with utamoe.data.sequences.collate")
        table = self.lm.get_input_embeddings()
        if packed is not None:
            return sample_mean_embedding(table(batch.input_ids), batch.prompt_mask.to(device),
                                         packed, len(batch.task_ids))
        return mean_token_embedding(table(batch.input_ids), batch.prompt_mask.to(device))

    def routing(self, batch: Batch, instances: torch.Tensor | None, trace: bool = False):
        """A factory of the routing context of inference forwards over `batch`'s rows: oracle-routed
        TA-MoE layers get each row's group, instance routers the rows' instruction embeddings
        (`instances`, from `instance_embeddings(batch)`: worked out once, not at every decoding
        step); a plain context when nothing needs one."""
        oracle = any(m.config.group_routing == "oracle" for m in moe_layers(self.lm))
        if not (oracle or trace or instances is not None):
            return contextlib.nullcontext
        labels = self.group_labels(batch.group_ids.to(self.gen_embed.weight.device)) if oracle else None
        return lambda: route(self, task_labels=labels, trace=trace, instances=instances)

    @property
    def processor(self) -> ImageProcessor:
        """The image processor every input image goes through (saved with the config)."""
        return ImageProcessor.of(self.config)

    def sequence_encoder(self, text_tokenizer) -> Encoder:
        """The sequence encoder for this model: its und slot and feature count, its codec,
        its image processor."""
        special = dataclasses.replace(SpecialIds.of(text_tokenizer), und_slot=self.config.und_slot_id)
        process = self.processor

        def image_codes(img) -> list[int]:
            device = self.gen_embed.weight.device
            return self.image_tokenizer.encode(pixel_values([img]).to(device)).reshape(-1).tolist()

        return Encoder(text_tokenizer, special, self.und_tokens, image_codes, process)

    def group_labels(self, group_ids: torch.Tensor) -> torch.Tensor:
        """Registry group indices (utamoe.tasks.GROUPS) -> the MoE layers' group indices."""
        moe = self.config.moe
        if moe is None or moe.routing != "task_aware" or tuple(moe.group_names) == GROUPS:
            return group_ids
        mapping = torch.tensor(group_index(moe.group_names), device=group_ids.device)
        return mapping[group_ids]

    # ------------------------------------------------------------------ parts of the forward

    @property
    def und_tokens(self) -> int:
        """Feature vectors the understanding encoder gives per image (slots in a sequence)."""
        return self.und_encoder.num_tokens(self.config.image_size)

    def und_features(self, pixel_values: torch.Tensor, instructions: torch.Tensor | None = None):
        """(N, P, D) features of N images; `instructions` (N, De) for a routed mixture."""
        if getattr(self.und_encoder, "needs_instructions", False):
            return self.und_encoder(pixel_values, instructions)
        return self.und_encoder(pixel_values)

    def code_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        return self.gen_aligner(self.gen_embed(codes))

    def embed(self, input_ids: torch.Tensor, code_ids: torch.Tensor | None = None,
              pixel_values: torch.Tensor | None = None,
              instances: torch.Tensor | None = None,
              sample_ids: torch.Tensor | None = None,
              unused: list | None = None) -> torch.Tensor:
        """(B, S, D) input embeddings: text table, understanding features, code embeddings.
        `instances` (B, De): the rows' instruction embeddings (for a routed MoVE mixture);
        packed rows: (N, De) per sample, with `sample_ids` (B, S) naming each token's sample.
        `unused` (a list; forward's `every_part`): the understanding encoder when there are no images and
        the code embedding when there are no codes run on a placeholder (one image of zeros,
        code 0) at the place where they would run, and their outputs are appended to the list
        (the embeddings do not change; `forward` adds 0 x their sum to the loss)."""
        emb = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            slots = input_ids == self.config.und_slot_id
            # Images are in the order of the rows that hold them; a conversation's row may
            # hold several (one run of slots each), and each gets its row's instruction.
            starts = slots & ~F.pad(slots[:, :-1], (1, 0))
            if instances is not None:  # packed rows: each image gets its sample's instruction
                instances = (instances.repeat_interleave(starts.sum(1), dim=0) if sample_ids is None
                             else instances[sample_ids[starts]])
            feats = self.und_features(pixel_values, instances)
            feats = feats.to(emb.dtype)
            if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
                raise ValueError(
                    f"{int(slots.sum())} understanding slots in the batch but {feats.shape[0]} images "
                    f"x {feats.shape[1]} features; build sequences with the model's und_tokens"
                )
            emb = emb.masked_scatter(slots[..., None], feats.reshape(-1, emb.shape[-1]))
        elif unused is not None:
            unused.append(self._placeholder_features(instances, emb.device))
        is_code = code_ids >= 0 if code_ids is not None else None
        if is_code is not None and bool(is_code.any()):
            codes = self.code_embeddings(code_ids[is_code]).to(emb.dtype)
            emb = emb.masked_scatter(is_code[..., None], codes)
        elif unused is not None:
            unused.append(self.code_embeddings(torch.zeros(1, dtype=torch.long, device=emb.device)))
        return emb

    def _placeholder_features(self, instances: torch.Tensor | None, device) -> torch.Tensor:
        """The understanding encoder on one image of zeros (`every_part`): with the first row's
        instruction (detached) for a routed mixture, outside the routing session (it records
        nothing) and with the random state restored after it (dropout draws the same numbers
        in the rest of the forward as without it). `device` is the embeddings': reading a
        parameter outside its module's forward would be a gather of its own under ZeRO-3."""
        size = self.config.image_size
        image = torch.zeros(1, 3, size, size, device=device)  # the processor's float32 layout
        if instances is not None:
            instances = instances[:1].detach()
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), _unrouted(self.und_encoder):
            return self.und_features(image, instances)

    def hidden(self, embeds, attention_mask=None, position_ids=None, past_key_values=None,
               use_cache: bool = False):
        # transformers renamed the decoders' `past_key_values` argument to `cache` (5.2x; the
        # old name warns and goes in 5.40): pass whichever this version's decoder takes.
        key = "cache" if _takes_cache(type(self.lm)) else "past_key_values"
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{key: past_key_values})
        return out.last_hidden_state, getattr(out, key, None)

    # ------------------------------------------------------------------ training forward

    def forward(self, batch: Batch, every_part: bool = False,
                attention_mode: str = "auto") -> UnifiedOutput:
        """The batch's losses. `every_part` (off by default): every trainable part runs on every
        forward, for engines that need every process to run the same modules in the same
        order (DeepSpeed ZeRO; utamoe.train.engines): the understanding encoder on a placeholder
        image when the batch has no images, the code embedding on one code when it has no
        codes, a head without labels on one hidden row (detached); 0 x the sum of each
        placeholder output is added to the loss, so the loss and every gradient keep their
        values bit for bit and those parts get exactly-zero gradients (it costs one image, one
        code and one head row per missing part). `attention_mode`: how packed rows tell the
        decoder their attention blocks (utamoe.model.packed_rows.MODES)."""
        packed = getattr(batch, "sample_ids", None)  # (B, S) in a PackedBatch, else None
        if packed is None:
            labels = self.group_labels(batch.group_ids)[:, None].expand_as(batch.input_ids)
            labels = labels.masked_fill(batch.attention_mask == 0, -1)
        else:  # per-sample group -> per token
            labels = self.group_labels(batch.group_ids)[packed.clamp(min=0)].masked_fill(packed < 0, -1)
        instances = self.instance_embeddings(batch)
        unused = [] if every_part else None  # placeholder outputs (every_part)
        with route(self, task_labels=labels, attention_mask=batch.attention_mask,
                   instances=instances, sample_ids=packed) as session:
            emb = self.embed(batch.input_ids, batch.code_ids, batch.pixel_values, instances, packed,
                             unused)
            if packed is None:
                h, _ = self.hidden(emb, attention_mask=batch.attention_mask)
            else:
                h, _ = self.hidden(emb, **packed_attention(self.lm, packed, batch.position_ids,
                                                           emb.dtype, attention_mode))
        group_losses, per_token = {}, {}
        for group, head, labels in (("und", self.lm_head, batch.text_labels),
                                    ("gen", self.gen_head, batch.code_labels)):
            pos = labels != IGNORE
            if bool(pos.any()):
                ce = F.cross_entropy(head(h[pos]).float(), labels[pos], reduction="none")
                group_losses[group] = ce.mean()
                per_token[group] = (ce.detach(), pos)
            elif unused is not None:  # not a group of this batch: no group_losses entry
                unused.append(head(h.detach()[:1, 0]))
        loss = sum(group_losses.values())
        if session.records:  # TA-MoE and MoLE router losses (a dense model adds nothing)
            loss = loss + session.aux_loss().to(loss.device)
        if unused:  # + 0 (exactly: the placeholders are finite), last, so no sum is reordered
            loss = loss + sum(u.float().sum() for u in unused) * 0.0
        return UnifiedOutput(loss, group_losses, _task_losses(batch, per_token),
                             session.losses(), session)

    # ------------------------------------------------------------------ surgery

    def upcycle(self, moe: MoEConfig, group_mlps: dict | None = None) -> None:
        """Turn the backbone's dense MLPs into TA-MoE layers (recorded in the config)."""
        if moe.routing == "task_aware":
            group_index(moe.group_names, "moe.group_names")
        upcycle(self.lm, moe, group_mlps=group_mlps)
        self.config.moe = moe


@functools.lru_cache(maxsize=4)
def _sentence_encoder(spec: str):
    """One frozen sentence encoder (and its text cache) per directory per process: every model
    built from the same config (preflight, resume, eval) shares it."""
    with torch.device("cpu"):  # also when the model is built on the meta device (preflight)
        return SentenceEncoder(spec)


@contextlib.contextmanager
def _unrouted(module: nn.Module):
    """`module`'s routed parts outside any routing session for the block (they record nothing)."""
    bound = [(m, m.session) for m in module.modules() if isinstance(m, RoutedModule)]
    for m, _ in bound:
        m.session = None
    try:
        yield
    finally:
        for m, session in bound:
            m.session = session


@functools.cache
def _takes_cache(decoder_cls) -> bool:
    return "cache" in inspect.signature(decoder_cls.forward).parameters


def _task_losses(batch: Batch, per_token: dict) -> dict[str, float]:
    """Mean CE per task (detached): the row (the sample, in packed rows) of each loss token
    tells its task."""
    out: dict[str, float] = {}
    names = task_names()
    packed = getattr(batch, "sample_ids", None)
    for ce, pos in per_token.values():
        owners = pos.nonzero()[:, 0] if packed is None else packed[pos]
        tasks = batch.task_ids[owners]
        for t in tasks.unique().tolist():
            out[names[t]] = float(ce[tasks == t].mean())
    return out


