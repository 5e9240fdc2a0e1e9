"""Damaged or foreign GGUF files are clear errors naming the file (issue 28, item 12): empty,
truncated, wrong magic or version, tensor data cut short, an architecture no loader knows, a
directory named like a GGUF file; for the backbone, its meta-device preflight and the text
tokenizer alike. Never a traceback."""

from __future__ import annotations

import struct

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.hf.parts import HFPart, build_backbone
from utamoe.text.tokenizer import load_text_tokenizer

from .test_gguf import VOCAB, write_tiny_gguf

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    write_tiny_gguf(root / "tiny.gguf")
    return (root / "tiny.gguf").read_bytes()


def _damaged(kind: str, good: bytes, root):
    file = root / "m.gguf"
    if kind == "empty":
        file.write_bytes(b"")
    elif kind == "truncated header":
        file.write_bytes(good[:200])
    elif kind == "short data":
        file.write_bytes(good[: len(good) - 3000])
    elif kind == "wrong magic":
        file.write_bytes(b"GGUX" + good[4:])
    elif kind == "wrong version":
        file.write_bytes(good[:4] + struct.pack("<I", 99) + good[8:])
    elif kind == "text":
        file.write_text("not a model\n" * 100)
    elif kind == "directory":
        file.mkdir()
    elif kind == "unknown architecture":
        w = gguf.GGUFWriter(str(file), "frobnicator")
        w.add_block_count(2)
        w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return file


KINDS = ["empty", "truncated header", "short data", "wrong magic", "wrong version", "text",
         "directory", "unknown architecture"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_gguf_backbone_is_a_config_error(good, tmp_path, kind):
    file = _damaged(kind, good, tmp_path)
    part = HFPart(path=str(tmp_path), gguf_file=file.name)
    with pytest.raises((ConfigError, FileNotFoundError), match="m.gguf"):
        build_backbone(part, VOCAB)
    with torch.device("meta"), pytest.raises((ConfigError, FileNotFoundError), match="m.gguf"):
        build_backbone(part, VOCAB)


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_gguf_tokenizer_is_a_config_error(good, tmp_path, kind):
    file = _damaged(kind, good, tmp_path)
    with pytest.raises((ConfigError, FileNotFoundError), match="m.gguf"):
        load_text_tokenizer(str(file))
