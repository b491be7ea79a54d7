"""Decoding benchmark: plain `generate` vs the copy-speculative one-pass decoder, and one-pass vs two-pass.

    python bench/decode.py [--model M] [--batch-size 8] [--texts 16] [--input docs.jsonl | --dataset aida-testa]
                           [--max-new-tokens N] [--dtype float32] [--device cpu] [--repeats 2] [--random-llama7b]
                           [--no-copy-rule]

Same model, same prompts (the mention-detection prompt of each text, in length order), one run:

- plain generate: HF `generate`, greedy, `[_CONTINUE_]` forced after `[LK]` (no vectors), in batches
  of `--batch-size`;
- two-pass: that `generate` plus a second forward over prompt + output for the `[LK]` states
  (what the official code's approach costs when the states are read afterwards);
- one-pass, no drafts: our decoder, one token per forward, states collected on the way, same batches;
- one-pass, copy drafts, batches: our decoder with `CopyDrafter`, same batches;
- one-pass, copy drafts: the same with `--batch-size` texts in flight, the next text joining as one
  ends (`copy_decode(batch_size=...)`, what `onegen.inference` does): no batch waits for its longest
  text. This is the headline ratio; the fixed-batch one is printed beside it.

Every method follows the copy rule (`onegen.constrain`: each output is its text with mention markup),
as `onegen.inference` decodes; for `generate` that is a logits processor. `--no-copy-rule` measures free
decoding instead.

Our decoder keeps the instruction's keys and values across batches (`PrefixCache`), as the link job
does over a corpus; plain `generate` prefills each whole prompt.

Every method runs over all texts `--repeats` times, interleaved, and the fastest run counts (the
machine is shared and noisy). It prints new tokens/s of each, the speed-ups of the copy decoder over
plain generate, the one-pass/two-pass time ratios, the drafting counters, and whether all methods
produced identical tokens (they must, up to float ties).

Which regime this measures: the default model (the bundled OneGen fine-tune) writes a marked copy
of each text. The drafter proposes that copy, with the markup of the mentions it expects (capitalised
names, `onegen.drafting`); a pass ends early where the model disagrees: a mention it starts or ends
elsewhere, or a word it changes. On a CPU a pass costs in proportion to its slots, so the slots
computed per committed token is printed too. `--random-llama7b` builds a Llama-2-7B-shaped random
model (bf16) for GPU timing: random weights never copy, so there the copy decoder's acceptance is ~0
and the table shows its overhead floor, not its gain.

Texts: `--input` JSONL with a `text` field; or `--dataset NAME` (`eval/run_gerbil.py`'s names, read from
`../shared/data`): the sentence windows of its first documents, `--window-tokens` source tokens each
(192 by default, to keep a CPU run short; the linker's default is 512); else built-in sentences
written for this benchmark.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from onegen.constrain import CopyRule
from onegen.decoding import DecodeStats, Decoded, copy_decode, greedy_decode
from onegen.kv_cache import PrefixCache
from onegen.drafting import CopyDrafter
from onegen.inference import eos_ids
from onegen.model import OneGen
from onegen.prompts import mention_prompt

SENTENCES = [  # written for this benchmark (news-like, many names)
    "The city council of Lyon approved a new tram line on Tuesday after a long debate.",
    "Maria Santos, the chief executive of Atlantic Freight, said profits rose by nine percent.",
    "Heavy rain flooded roads across northern Portugal and closed the airport in Porto for six hours.",
    "The Springfield Tigers beat the Riverside Hawks 3-2 in overtime on Saturday night.",
    "Officials in Nairobi announced a census of the region's elephant population.",
    "Professor Liam O'Connor of Trinity College Dublin won the award for his work on glaciers.",
    "Shares of Nordic Steel fell sharply in Stockholm after the company cut its forecast.",
    "The festival in Edinburgh drew more than two million visitors this summer, organisers said.",
    "Prime Minister Anna Keller met President Jonas Weber in Vienna to discuss energy prices.",
    "A new bridge over the Danube near Budapest will open to traffic next spring.",
    "Engineers at Orion Labs in Austin tested a battery that charges in ten minutes.",
    "Fans in Buenos Aires celebrated late into the night after the cup final.",
]


def sample_texts(n: int) -> list[str]:
    """n texts of 1-3 sentences each (varied lengths)."""
    return [" ".join(SENTENCES[(i + j * 5) % len(SENTENCES)] for j in range(1 + i % 3)) for i in range(n)]


def read_texts(path: Path, n: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def dataset_windows(name: str, n: int, tokenizer, window_tokens: int) -> list[str]:
    """The first n sentence windows of dataset `name`, as the linker cuts them (needs spaCy)."""
    from eval.corpora import DEFAULT_DATA_DIR, load_dataset
    from onegen.chunking import sentence_windows

    texts = []
    for doc in load_dataset(name, DEFAULT_DATA_DIR):
        windows = sentence_windows(doc.text, window_tokens, lambda s: len(tokenizer(s, add_special_tokens=False).input_ids))
        texts += [doc.text[w.start : w.end] for w in windows]
        if len(texts) >= n:
            return texts[:n]
    return texts


def random_llama7b(device: str) -> OneGen:
    """A Llama-2-7B-shaped random model (bf16) with the default model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from onegen.default_model import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer) + 3,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return OneGen(model, tokenizer, device=device)


def timed(fn: Callable[[], list[Decoded]], device: torch.device) -> tuple[float, list[Decoded]]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--texts", type=int, default=16, help="number of texts")
    texts_from = parser.add_mutually_exclusive_group()
    texts_from.add_argument("--input", type=Path, default=None, help="JSONL with a 'text' field (default: built-in sentences)")
    texts_from.add_argument("--dataset", default=None, help="windows of this dataset's first documents, e.g. aida-testa")
    parser.add_argument("--window-tokens", type=int, default=192, help="source tokens per --dataset window (default 192)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 2 x longest text's tokens + 64")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--draft-tokens", type=int, default=None, help="draft cap (default: the decoder's, by device)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch and method, the fastest counts (shared machines)")
    parser.add_argument("--random-llama7b", action="store_true", help="Llama-2-7B-shaped random model, bf16 (GPU timing)")
    parser.add_argument("--no-copy-rule", action="store_true", help="decode freely (default: the copy rule, as the linker)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    onegen = random_llama7b(str(device)) if args.random_llama7b else OneGen.from_pretrained(args.model, device=device, dtype=args.dtype)
    tokenizer, model, ids = onegen.tokenizer, onegen.model, onegen.token_ids
    if args.input:
        texts = read_texts(args.input, args.texts)
    elif args.dataset:
        texts = dataset_windows(args.dataset, args.texts, tokenizer, args.window_tokens)
    else:
        texts = sample_texts(args.texts)
    prompts = [tokenizer(mention_prompt(tokenizer, t), add_special_tokens=False).input_ids for t in texts]
    source_tokens = max(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    max_new = args.max_new_tokens or 2 * source_tokens + 64
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))
    common = dict(max_new_tokens=max_new, pad_token_id=pad, eos_token_ids=eos)
    stats = DecodeStats()
    prefix = PrefixCache()  # the instruction, kept across batches as the link job keeps it

    def batched(decode: Callable[[list[int]], list[Decoded]]) -> Callable[[list[int]], list[Decoded]]:
        """`decode` run on each batch of `args.batch_size` of the texts in turn."""
        return lambda texts_order: [d for b in range(0, len(texts_order), args.batch_size)
                                    for d in decode(texts_order[b : b + args.batch_size])]

    def drafter(b: list[int]) -> CopyDrafter:
        return CopyDrafter(tokenizer, [texts[i] for i in b], [prompts[i] for i in b])

    def rule(b: list[int]) -> CopyRule | None:
        return None if args.no_copy_rule else CopyRule.for_tokenizer(tokenizer, [texts[i] for i in b], ids.link, ids.cont, set(eos))

    def generate(b: list[int], states: bool) -> list[Decoded]:
        return greedy_decode(model, ids, [prompts[i] for i in b], states=states, rule=rule(b), **common)

    def one_pass(b: list[int], copy_drafts: bool, **kw) -> list[Decoded]:
        return copy_decode(model, ids, [prompts[i] for i in b], drafter(b) if copy_drafts else None, rule=rule(b),
                           draft_tokens=args.draft_tokens, prefix_cache=prefix, **common, **kw)

    methods = {
        "plain generate": batched(lambda b: generate(b, states=False)),
        "two-pass (generate + forward)": batched(lambda b: generate(b, states=True)),
        "one-pass, no drafts": batched(lambda b: one_pass(b, copy_drafts=False)),
        "one-pass, copy drafts, batches": batched(lambda b: one_pass(b, copy_drafts=True)),
        "one-pass, copy drafts": lambda b: one_pass(b, copy_drafts=True, batch_size=args.batch_size, stats=stats),
    }
    # Warm-up (first-call allocations). On a GPU every method once over the first batch: with one repeat,
    # the first method timed there otherwise pays the clock ramp-up and each new shape's kernel choice.
    gpu = device.type == "cuda"
    first_batch = order[: args.batch_size]
    for fn in methods.values() if gpu else [methods["plain generate"]]:
        fn(first_batch if gpu else first_batch[:1])
    stats = DecodeStats()  # count the timed runs only (the lambdas read this name when they run)
    seconds = {name: math.inf for name in methods}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):  # interleaved; the fastest run of each method counts (the least disturbed)
        for name, fn in methods.items():
            t, decoded = timed(lambda: fn(order), device)
            seconds[name] = min(seconds[name], t)
            outputs.setdefault(name, [d.tokens for d in decoded])
    new_tokens = sum(len(t) for t in outputs["plain generate"])
    print(f"device={device} model={'random-llama7b' if args.random_llama7b else onegen.name_or_path} "
          f"dtype={onegen.dtype} texts={len(texts)} batch={args.batch_size} max_new_tokens={max_new} "
          f"copy rule={'no' if args.no_copy_rule else 'yes'} "
          f"prompt tokens={sum(map(len, prompts))} new tokens={new_tokens}")
    print(f"{'method':32s} {'seconds':>9s} {'new tok/s':>10s}")
    for name in methods:
        print(f"{name:32s} {seconds[name]:9.2f} {sum(map(len, outputs[name])) / seconds[name]:10.1f}")
    plain_rate = new_tokens / seconds["plain generate"]
    for name, label in (("one-pass, copy drafts", f"{args.batch_size} in flight"), ("one-pass, copy drafts, batches", "fixed batches")):
        rate = sum(map(len, outputs[name])) / seconds[name]
        print(f"copy decoder vs plain generate (tokens/s), {label}: {rate / plain_rate:.2f}x")
    print(f"two-pass / one-pass time, copy drafts: {seconds['two-pass (generate + forward)'] / seconds['one-pass, copy drafts']:.2f}x")
    print(f"two-pass / one-pass time, no drafts:   {seconds['two-pass (generate + forward)'] / seconds['one-pass, no drafts']:.2f}x")
    stats = DecodeStats(**{name: count // args.repeats for name, count in vars(stats).items()})  # one run's (they repeat)
    print(f"drafting ({args.batch_size} in flight, one run): {stats.forward_passes} passes after the instruction, {stats.accepted}/{stats.drafted} drafted tokens accepted "
          f"({stats.accepted / max(stats.drafted, 1):.0%}), {stats.generated / max(stats.forward_passes, 1):.1f} tokens/pass "
          f"over the batch, {stats.slots / max(stats.generated, 1):.2f} slots computed per token, {stats.compactions} compactions")
    differ = sum(a != b for name in methods for a, b in zip(outputs[name], outputs["plain generate"]))
    print(f"identical tokens across methods: {'yes' if differ == 0 else f'NO ({differ} rows differ)'}")


if __name__ == "__main__":
    main()
