"""Greedy decoding for OneGen: `[_CONTINUE_]` forced after every `[LK]`, the `[LK]` hidden states
collected in the same pass, and copy-speculative verification so that a copied span costs one forward.

Two decoders with the same output:

- `greedy_decode`: the reference. Hugging Face `generate` (greedy) with a logits processor that forces
  `[_CONTINUE_]` after `[LK]`, then a second forward over prompt + output to read the `[LK]` states.
- `copy_decode`: the fast path. The marked output is mostly a copy of the source text, so a drafter
  (`onegen.drafting.CopyDrafter`) proposes the next k tokens from the source, with the markup of the
  mentions it expects, and ONE forward pass scores all of them. The model's own greedy choice at each drafted slot (with the forcing
  rule applied: the token after `[LK]` is `[_CONTINUE_]`) decides: the longest drafted prefix that
  equals those choices is accepted, plus the model's next token after it. Every committed token is thus
  the greedy token given its prefix: the output is token-for-token that of plain greedy decoding
  (up to floating-point ties: a forward over k+1 new tokens rounds differently from k+1 single-token
  forwards). The last layer's hidden state after the final norm (`hidden_states[-1]`) comes with the
  same forward, so a committed `[LK]` has its vector with no second pass.

Both take an output rule (`onegen.constrain.CopyRule`): the choice at each step is then the model's best
token among those the rule allows after the output so far (the copy decoder checks its RANKED_TOKENS
best ids per slot first), so the two still agree.

Batching design: one KV cache for the whole batch, rows of different lengths and different acceptance.
- The prompts' shared prefix (chat template + instruction) is forwarded once and copied to every row's
  cache; with a `PrefixCache`, later calls reuse its keys and values instead. The rest of each prompt is
  fed by the first pass, right-padded: a shorter prompt's free slots carry a draft of its first output
  tokens. Every forward gets a 2D attention mask over all cache slots (past + new) and explicit per-row
  `position_ids` (the row's count of real tokens so far), as `generate` does. Logits are computed only
  from the first slot whose greedy token is needed (not for a prompt's inner slots).
- The cache grows in place (`onegen.kv_cache`): a pass writes its slots, it does not copy the cache.
- Each pass appends W = 1 + max draft length slots per row: the row's last committed token, its draft,
  then padding. Slots of rejected drafts and padding stay in the cache but are masked out (mask 0) for
  every later query, so a row sees exactly its own committed prefix, at the right rotary positions.
- Rows that stop (EOS, max_new_tokens) leave the batch (the cache rows are dropped). With `batch_size`
  smaller than the number of prompts, the next prompt takes a leaving row's place (continuous batching;
  the prompts with the largest budgets, then the longest, go first, so that the last to join are short):
  its cache row starts with the shared prefix's keys and values, and the rest of its prompt is fed in
  the following passes, in chunks as wide as the pass, beside the other rows' drafts, so joining costs
  no forward of its own. The slots the last chunk leaves free carry a draft of its first tokens,
  verified from the prompt's last slot on.
- When masked slots make up too much of the cache, it is compacted: each row's live slots are gathered
  and left-aligned again. Rotary positions were applied when the keys were written, so moving slots is exact.
- Models with sliding-window attention (Mistral) are exact only while the cache is shorter than the
  window, since the window counts cache slots.

The pass width is chosen by cost (`_pass_width`): from each row's rate of accepted draft tokens so far,
the expected tokens a pass commits, against what it costs, a fixed part plus its slots (rows x width).
On a GPU a pass of a few dozen slots costs about one slot, so passes are as wide as the cap; on a CPU a
slot costs about 1/32 of a pass, so rows whose drafts keep failing (an untrained model, an output that
does not copy) make narrower passes, and `DRAFT_TOKENS` there is shorter.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import Cache, DynamicCache, LogitsProcessor, LogitsProcessorList

from onegen.attention import packed_gqa
from onegen.kv_cache import PrefixCache, growing_cache, param_versions
from onegen.shared_prefix import shared_prefix_length

if TYPE_CHECKING:
    from onegen.constrain import CopyRule


DRAFT_TOKENS = 16  # most drafted tokens per row and pass, on a GPU ...
CPU_DRAFT_TOKENS = 12  # ... and on a CPU (AIDA windows, default model, batch 8: 12 took 0.92x the time of 16)
PASS_COST_SLOTS = 1000  # what a pass costs beyond its slots, in slots, on a GPU (a pass of dozens of slots costs about one) ...
CPU_PASS_COST_SLOTS = 32  # ... and on a CPU (SmolLM2, batch 8: 60 ms a pass plus 1.85 ms a slot)
PRIOR_ACCEPTED, PRIOR_REJECTED = 9, 1  # a new row's acceptance rate counts as 9 tokens accepted per draft rejected
COMPACT_WASTE = 0.15  # compact the cache when masked slots exceed this fraction of it ...
COMPACT_MIN_SLOTS = 64  # ... and it has more slots than this
MIN_SHARED_PREFIX = 8  # prompts sharing at least this many first tokens prefill them once
RANKED_TOKENS = 8  # with an output rule, the best ids per slot it checks first (onegen.constrain.CopyRule.pick)


@dataclass
class Decoded:
    """The output of one prompt."""

    tokens: list[int]  # generated token ids, the stopping EOS included when one was generated
    link_positions: list[int]  # index in `tokens` of every [LK] that has a vector, in order
    link_states: torch.Tensor  # (len(link_positions), D) float32, last-layer state after the final norm


@dataclass
class DecodeStats:
    """Counters of `copy_decode` calls, added to by each call (for benchmarks and tuning)."""

    forward_passes: int = 0  # forwards after the prefill
    drafted: int = 0  # draft tokens scored
    accepted: int = 0  # draft tokens accepted
    generated: int = 0  # tokens committed over all rows
    slots: int = 0  # token slots the verify passes computed (rows x pass width) for drafts and padding: their cost on a CPU
    prompt_fed: int = 0  # prompt tokens fed after the shared prefix (not in `slots`)
    compactions: int = 0  # cache compactions


class Drafter(Protocol):
    """Proposes the next tokens of one row."""

    def draft(self, row: int, tokens: Sequence[int], k: int) -> list[int]:
        """Up to `k` guessed next tokens for prompt `row` after its generated `tokens`."""


class ForceContinue(LogitsProcessor):
    """Forces `[_CONTINUE_]` as the next token of every row whose last token is `[LK]`."""

    def __init__(self, link_id: int, continue_id: int):
        self.link_id = link_id
        self.continue_id = continue_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids[:, -1] == self.link_id  # (B,)
        forced = torch.full_like(scores[rows], float("-inf"))
        forced[:, self.continue_id] = 0.0
        scores[rows] = forced
        return scores


class FollowRule(LogitsProcessor):
    """Leaves each row only its best token that `rule` allows after the row's output so far (a row
    whose output the rule refuses, e.g. padding after its EOS, is left alone)."""

    def __init__(self, rule: CopyRule, prompt_width: int):
        self.rule = rule
        self.prompt_width = prompt_width  # the generated tokens start there
        self.states: list | None = None  # each row's rule state after the tokens seen so far
        self.seen = 0  # generated tokens seen so far

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.states is None:
            self.states = [self.rule.start(r) for r in range(input_ids.shape[0])]
        new = input_ids[:, self.prompt_width + self.seen :].tolist()
        self.seen += len(new[0])
        ranked = scores.topk(RANKED_TOKENS, dim=-1).indices.tolist()
        for r, tokens in enumerate(new):
            for token in tokens:
                self.states[r] = self.states[r] and self.rule.advance(self.states[r], token)
            if self.states[r] is not None:
                choice = self.rule.pick(self.states[r], ranked[r], lambda: scores[r])
                forced = torch.full_like(scores[r], float("-inf"))
                forced[choice] = 0.0
                scores[r] = forced
        return scores


def _eos_ids(model, eos_token_ids) -> set[int]:
    if eos_token_ids is None:
        eos_token_ids = model.generation_config.eos_token_id
    if eos_token_ids is None:
        return set()
    return {int(eos_token_ids)} if isinstance(eos_token_ids, int) else {int(i) for i in eos_token_ids}


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) with the prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as `generate` computes them: (B, T)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(f"expected a non-empty list of non-empty prompts (token id lists), got lengths {[len(p) for p in prompts]}")


@torch.inference_mode()
def greedy_decode(
    model,
    token_ids,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_ids: int | Sequence[int] | None = None,
    states: bool = True,
    rule: CopyRule | None = None,
) -> list[Decoded]:
    """The reference: HF `generate` (greedy, `[_CONTINUE_]` forced after `[LK]`, only what `rule` allows
    when one is given: prompt i is its row i) on the left-padded batch, then a second forward over
    prompt + output to read the `[LK]` states (skipped when `states=False`: no [LK] then has a vector).
    `token_ids` has `.link`, `.cont`."""
    _check_prompts(prompts)
    device = model.device
    eos = _eos_ids(model, eos_token_ids)
    ids, mask = _left_pad(prompts, pad_token_id, device)
    processors = [ForceContinue(token_ids.link, token_ids.cont)] + ([FollowRule(rule, ids.shape[1])] if rule else [])
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=LogitsProcessorList(processors),
        pad_token_id=pad_token_id,
        eos_token_id=sorted(eos) or None,
    )
    width = ids.shape[1]
    rows = []
    for r in range(len(prompts)):
        tokens = []
        for t in out[r, width:].tolist():
            tokens.append(t)
            if t in eos:
                break
        rows.append(tokens)
    if not states:
        empty = torch.zeros((0, model.config.hidden_size), dtype=torch.float32)
        return [Decoded(t, [], empty) for t in rows]
    # second forward: prompts left-padded, outputs right-padded, padding masked
    full = torch.full((len(rows), out.shape[1]), pad_token_id, dtype=torch.long, device=device)
    full_mask = torch.zeros_like(full)
    full[:, :width], full_mask[:, :width] = ids, mask
    for r, tokens in enumerate(rows):
        full[r, width : width + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        full_mask[r, width : width + len(tokens)] = 1
    hidden = model(
        input_ids=full,
        attention_mask=full_mask,
        position_ids=_positions(full_mask),
        output_hidden_states=True,
        logits_to_keep=1,  # only the states are needed
    ).hidden_states[-1]  # (B, T, D)
    decoded = []
    for r, tokens in enumerate(rows):
        positions = [i for i, t in enumerate(tokens) if t == token_ids.link]
        states = hidden[r, [width + i for i in positions]].float().cpu()  # (n, D)
        decoded.append(Decoded(tokens, positions, states))
    return decoded


@dataclass
class _Row:
    """Decoding state of one prompt in `copy_decode`."""

    index: int  # position in the caller's prompt list
    budget: int  # max new tokens of this row
    tokens: list[int] = field(default_factory=list)  # committed generated tokens; the last one is not fed yet
    live: int = 0  # live cache slots (real prompt tokens + fed tokens) = next position id
    accepted: int = 0  # draft tokens accepted so far ...
    rejected: int = 0  # ... and drafts cut short by the model
    link_positions: list[int] = field(default_factory=list)
    link_states: list[torch.Tensor] = field(default_factory=list)  # (D,) each
    flush: bool = False  # finished, but its last token is an unfed [LK] whose state is still needed
    feed: list[int] = field(default_factory=list)  # prompt tokens still to feed (a row that joined mid-decode)
    done: bool = False
    state: object = None  # the output rule's state after `tokens` (with a rule)


def _select_rows(cache: Cache, keep: torch.Tensor) -> None:
    """Keep batch rows `keep` (R,) of every cache layer (layers may sit on different GPUs)."""
    for layer in cache.layers:
        index = keep.to(layer.keys.device)
        layer.keys = layer.keys.index_select(0, index)  # (R, H, T, d)
        layer.values = layer.values.index_select(0, index)


def _compact(cache: Cache, mask: torch.Tensor) -> torch.Tensor:
    """Gather each row's live slots (mask 1), left-padded to the longest row; returns the new mask (B, L)."""
    live = mask.sum(-1)  # (B,)
    width = int(live.max())
    # stable sort puts masked slots (0) first and live slots (1) last, in order: take the last `width`
    order = torch.sort(mask.long(), dim=-1, stable=True).indices[:, -width:]  # (B, L)
    for layer in cache.layers:
        b, h, _, d = layer.keys.shape
        index = order[:, None, :, None].expand(b, h, width, d).to(layer.keys.device)  # (B, H, L, d)
        layer.keys = layer.keys.gather(2, index)
        layer.values = layer.values.gather(2, index)
    return mask.gather(1, order)


def _prefix_kv(model, prefix: Sequence[int], device, reuse: PrefixCache | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (1, H, P, d), of `prefix` or of its leading part held in `reuse`
    (at least MIN_SHARED_PREFIX tokens); a fresh forward refills `reuse`."""
    if reuse is not None:
        n = reuse.held(model, prefix)
        if n >= MIN_SHARED_PREFIX:
            return [(keys[:, :, :n], values[:, :, :n]) for keys, values in reuse.layers]
    cache = DynamicCache()
    model(input_ids=torch.tensor([list(prefix)], dtype=torch.long, device=device), cache=cache, use_cache=True, logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    if reuse is not None:
        reuse.tokens, reuse.versions, reuse.layers = list(prefix), param_versions(model), layers
    return layers


def _join(cache: Cache, mask: torch.Tensor, prefix: list[tuple[torch.Tensor, torch.Tensor]], row: _Row,
          prompt: Sequence[int]) -> torch.Tensor:
    """Add `row` to the batch as its last row: its cache row holds the prefix's keys and values in its
    first slots (the cache grows to hold them if it is shorter), its prompt's rest is left to feed.
    Returns the new mask (B + 1, T)."""
    held = prefix[0][0].shape[2] if prefix else 0
    missing = max(held - mask.shape[1], 0)
    if missing:  # every other row masks the new slots
        mask = torch.cat([mask, mask.new_zeros((mask.shape[0], missing))], dim=1)
    for layer, (keys, values) in zip(cache.layers, prefix or [(None, None)] * len(cache.layers)):
        b, h, t, d = layer.keys.shape
        new_keys = layer.keys.new_zeros((b + 1, h, t + missing, d))
        new_values = layer.values.new_zeros((b + 1, h, t + missing, d))
        new_keys[:b, :, :t], new_values[:b, :, :t] = layer.keys, layer.values
        if held:
            new_keys[b, :, :held], new_values[b, :, :held] = keys[0].to(new_keys.device), values[0].to(new_values.device)
        layer.keys, layer.values = new_keys, new_values
    row_mask = mask.new_zeros((1, mask.shape[1]))
    row_mask[0, :held] = 1
    row.live, row.feed = held, list(prompt[held:])
    return torch.cat([mask, row_mask], dim=0)


@torch.inference_mode()
def copy_decode(
    model,
    token_ids,
    prompts: Sequence[Sequence[int]],
    drafter: Drafter | None,
    *,
    max_new_tokens: int | Sequence[int],
    pad_token_id: int,
    eos_token_ids: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    draft_tokens: int | None = None,
    compact_waste: float = COMPACT_WASTE,
    stats: DecodeStats | None = None,
    prefix_cache: PrefixCache | None = None,
    rule: CopyRule | None = None,
) -> list[Decoded]:
    """Greedy decoding of `prompts` (token id lists) with drafts verified in one forward each (module doc).

    `drafter=None` decodes one token per pass (no drafting). `max_new_tokens` is one limit or one per
    prompt. `batch_size` is the most prompts decoded at once (default: all): the next prompt joins as a
    row stops. `draft_tokens` caps the draft length (default: `DRAFT_TOKENS`, `CPU_DRAFT_TOKENS` on a
    CPU); the cache is compacted when more than `compact_waste` of its slots are masked. `prefix_cache`
    keeps the prompts' shared prefix for the next call. With a `rule` (onegen.constrain.CopyRule, prompt i
    its row i), each committed token is the best one the rule allows. `token_ids` has `.link` and `.cont`. Returns one
    `Decoded` per prompt, in order. The model's `sdpa` attention runs with the KV heads unexpanded
    (`onegen.attention.packed_gqa`)."""
    with packed_gqa(model):
        return _copy_decode(model, token_ids, prompts, drafter, max_new_tokens, pad_token_id, eos_token_ids,
                            batch_size, draft_tokens, compact_waste, stats, prefix_cache, rule)


def _copy_decode(model, token_ids, prompts, drafter, max_new_tokens, pad_token_id, eos_token_ids, batch_size,
                 draft_tokens, compact_waste, stats, prefix_cache, rule) -> list[Decoded]:
    _check_prompts(prompts)
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"expected one max_new_tokens per prompt ({len(prompts)}), got {len(budgets)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stats = stats if stats is not None else DecodeStats()
    device = model.device
    if draft_tokens is None:
        draft_tokens = CPU_DRAFT_TOKENS if device.type == "cpu" else DRAFT_TOKENS
    pass_cost = CPU_PASS_COST_SLOTS if device.type == "cpu" else PASS_COST_SLOTS
    link, cont = token_ids.link, token_ids.cont
    eos = _eos_ids(model, eos_token_ids)
    rows = [_Row(i, budgets[i], done=budgets[i] <= 0, state=rule and rule.start(i)) for i in range(len(prompts))]
    # the longest first (by budget, then prompt), so that no long output starts when the others are done
    queue = sorted((r for r in rows if not r.done), key=lambda r: (r.budget, len(prompts[r.index])), reverse=True)
    if not queue:
        return [Decoded([], [], torch.zeros((0, model.config.hidden_size), dtype=torch.float32)) for _ in rows]
    batch_size = batch_size or len(rows)
    first_rows, waiting = queue[:batch_size], deque(queue[batch_size:])

    # [1] the first rows: the prompts' shared prefix (the instruction) forwarded once, or taken from
    # `prefix_cache`, in every row's cache; the rest of each prompt is fed by the first pass
    shared = shared_prefix_length(prompts) if len(prompts) > 1 or prefix_cache is not None else 0
    prefix = _prefix_kv(model, prompts[first_rows[0].index][:shared], device, prefix_cache) if shared >= MIN_SHARED_PREFIX else []
    held = prefix[0][0].shape[2] if prefix else 0
    cache = growing_cache()
    for i, (keys, values) in enumerate(prefix):
        cache.update(keys.expand(len(first_rows), -1, -1, -1), values.expand(len(first_rows), -1, -1, -1), i)
    mask = torch.ones((len(first_rows), held), dtype=torch.long, device=device)
    for row in first_rows:
        row.live, row.feed = held, list(prompts[row.index][held:])
    active = first_rows

    # [2] draft (or feed a joining row's prompt), verify, commit until every row stops
    while True:
        still = [i for i, r in enumerate(active) if not r.done]
        if len(still) < len(active):
            keep = torch.tensor(still, dtype=torch.long, device=device)
            _select_rows(cache, keep)
            mask = mask.index_select(0, keep)
            active = [active[i] for i in still]
        while waiting and len(active) < batch_size:
            row = waiting.popleft()
            mask = _join(cache, mask, prefix, row, prompts[row.index])
            active.append(row)
        if not active:
            break
        if mask.shape[1] > COMPACT_MIN_SLOTS and int(mask.sum(-1).max()) < (1 - compact_waste) * mask.shape[1]:
            mask = _compact(cache, mask)
            stats.compactions += 1

        steps = _steps(active, drafter, draft_tokens, pass_cost, link, cont)
        choices, hidden, step_mask = _forward(model, cache, mask, active, steps, pad_token_id, link, cont, rule)
        stats.forward_passes += 1
        accepted_mask = torch.zeros_like(step_mask)
        for i, (row, step) in enumerate(zip(active, steps)):
            accepted_mask[i, : _settle(row, step, choices, i, hidden[i], eos, link, stats, rule)] = 1
        prompt_fed = sum(len(step.prompt) for step in steps)
        stats.slots += step_mask.numel() - prompt_fed
        stats.prompt_fed += prompt_fed
        mask = torch.cat([mask, accepted_mask], dim=1)  # rejected drafts and padding stay masked

    stats.generated += sum(len(r.tokens) for r in rows)
    hidden_size = model.config.hidden_size
    return [
        Decoded(
            r.tokens,
            r.link_positions,
            torch.stack(r.link_states) if r.link_states else torch.zeros((0, hidden_size), dtype=torch.float32),
        )
        for r in rows
    ]


@dataclass
class _Choices:
    """The model's choices at the slots of one pass: its best token at each, or with an output rule its
    RANKED_TOKENS best, the forcing rule applied ([_CONTINUE_] after [LK]), [-1] before the first slot
    that needs one."""

    ranked: list[list[list[int]]]  # (B, W, 1 or RANKED_TOKENS) ids, best first
    logits: torch.Tensor  # (B, scored, V): the last `scored` slots of the pass
    offset: int  # W - scored

    def token(self, row: int, slot: int, rule: CopyRule | None, state) -> int:
        """The committed token at `slot` of `row`: the best one, or the best one `rule` allows in `state`."""
        if rule is None:
            return self.ranked[row][slot][0]
        return rule.pick(state, self.ranked[row][slot], lambda: self.logits[row, slot - self.offset])


def _forward(model, cache: Cache, mask: torch.Tensor, active: Sequence[_Row], steps: Sequence[_Step], pad_id: int,
             link: int, cont: int, rule: CopyRule | None) -> tuple[_Choices, torch.Tensor, torch.Tensor]:
    """One pass over every row's step, right-padded. Returns (the choices at each slot; the last-layer
    states after the final norm (B, W, D); the mask of the fed slots (B, W))."""
    device = mask.device
    width = max(len(step.tokens) for step in steps)
    step_ids = torch.full((len(active), width), pad_id, dtype=torch.long)
    step_mask = torch.zeros((len(active), width), dtype=torch.long)
    for i, step in enumerate(steps):
        step_ids[i, : len(step.tokens)] = torch.tensor(step.tokens, dtype=torch.long)
        step_mask[i, : len(step.tokens)] = 1
    step_ids, step_mask = step_ids.to(device), step_mask.to(device)
    scored = width - min((step.verify for step in steps if step.draft is not None), default=width - 1)
    live = torch.tensor([r.live for r in active], dtype=torch.long, device=device)
    out = model(
        input_ids=step_ids,
        attention_mask=torch.cat([mask, step_mask], dim=1),  # (B, T + W)
        position_ids=live[:, None] + torch.arange(width, device=device)[None, :],  # (B, W)
        cache=cache,
        use_cache=True,
        output_hidden_states=True,
        logits_to_keep=scored,  # the last slots, from the first one whose greedy token is needed
    )
    best = out.logits.topk(RANKED_TOKENS, dim=-1).indices if rule else out.logits.argmax(-1, keepdim=True)
    ranked = torch.full((len(active), width, best.shape[-1]), -1, dtype=torch.long, device=best.device)
    ranked[:, width - scored :] = best
    forced = (step_ids.to(ranked.device) == link)[:, :, None].expand_as(ranked)
    ranked = torch.where(forced, torch.full_like(ranked, cont), ranked)
    return _Choices(ranked.tolist(), out.logits, width - scored), out.hidden_states[-1], step_mask


def _settle(row: _Row, step: _Step, choices: _Choices, i: int, hidden: torch.Tensor, eos: set[int], link: int,
            stats: DecodeStats, rule: CopyRule | None) -> int:
    """Apply one pass to `row` (row `i` of the pass): its prompt chunk stays; of its draft, the longest
    prefix equal to the model's choices is accepted, then its choice after it is committed; a fed [LK]
    keeps its state (`hidden`: (W, D)). Returns how many of the row's first slots stay in its cache."""
    fed = len(step.prompt)
    del row.feed[:fed]
    if step.draft is None:
        row.live += fed
        return fed
    verify, draft, n = step.verify, step.draft, 0
    state = row.state
    choice = choices.token(i, verify, rule, state)
    while n < len(draft) and draft[n] == choice:
        state = rule and rule.advance(state, choice)
        n += 1
        choice = choices.token(i, verify + n, rule, state)
    stats.drafted += len(draft)
    stats.accepted += n
    row.live += verify + n + 1
    base = len(row.tokens) - len(step.last)  # index in row.tokens of the first output token fed
    for j, token in enumerate(step.last + draft[:n]):
        if token == link:
            row.link_positions.append(base + j)
            row.link_states.append(hidden[fed + j].float().cpu())
    if row.flush:
        row.done = True
    else:
        _commit(row, draft[:n] + [choice], eos, link, fed=n)
        row.state = rule and rule.advance(state, choice)
        row.accepted += n
        row.rejected += n < len(draft)
    return verify + n + 1


def _pass_width(rows: Sequence[_Row], cap: int, pass_cost: float) -> int:
    """The draft length (1..cap) with the most expected committed tokens per slot-cost of the pass.

    A row accepts each next draft token with its rate so far, p = accepted / (accepted + rejected)
    (with the prior), so it commits 1 + p + p^2 + ... + p^k tokens from a draft of k; the pass costs
    `pass_cost` + rows x (k + 1) slots."""
    rates = [(r.accepted + PRIOR_ACCEPTED) / (r.accepted + r.rejected + PRIOR_ACCEPTED + PRIOR_REJECTED) for r in rows]
    expected, best, width = float(len(rows)), 0.0, 1
    for k in range(1, cap + 1):
        expected += sum(p**k for p in rates)
        value = expected / (pass_cost + len(rows) * (k + 1))
        if value > best:
            best, width = value, k
    return width


@dataclass
class _Step:
    """What one row feeds in a pass, in order: prompt tokens (a joining row), its last committed token
    (a decoding row), a draft. `draft` is None for a prompt chunk that is not the prompt's last."""

    prompt: list[int]
    last: list[int]
    draft: list[int] | None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.last + (self.draft or [])

    @property
    def verify(self) -> int:
        """The slot whose greedy token is the row's next one (the draft is checked from there on)."""
        return len(self.prompt) + len(self.last) - 1


def _steps(active: Sequence[_Row], drafter: Drafter | None, cap: int, pass_cost: float, link: int, cont: int) -> list[_Step]:
    """What each row feeds in the next pass.

    A decoding row feeds its last committed token and its draft (`_pass_width` long at most: a shorter
    draft would leave its slots as padding, which costs the same). A joining row feeds the next chunk of
    its prompt, as wide as the pass, or as wide as a pass's fixed cost spread over its rows when that is
    more (on a GPU), or the whole rest when no row decodes; the slots its last chunk leaves free hold a
    draft of its first tokens."""

    def draft(row: _Row, last: int, room: int) -> list[int]:
        guess = drafter.draft(row.index, row.tokens, room) if drafter is not None and room > 0 else []
        return _force_draft(last, guess[:room], link, cont)

    steps: list[_Step] = [_Step([], [], None)] * len(active)
    decoding = [i for i, row in enumerate(active) if not row.feed]
    pass_k = _pass_width([active[i] for i in decoding], cap, pass_cost) if decoding else 0
    for i in decoding:
        row = active[i]
        room = 0 if row.flush else min(pass_k, row.budget - len(row.tokens) - 1)
        steps[i] = _Step([], [row.tokens[-1]], draft(row, row.tokens[-1], room))
    width = max((len(steps[i].tokens) for i in decoding), default=0)
    chunk = max(width, int(pass_cost) // len(active)) if decoding else max(len(r.feed) for r in active)
    width = max([width] + [min(len(r.feed), chunk) for r in active])
    for i, row in enumerate(active):
        if len(row.feed) > chunk:
            steps[i] = _Step(row.feed[:chunk], [], None)
        elif row.feed:
            room = min(width - len(row.feed), row.budget - 1)
            steps[i] = _Step(list(row.feed), [], draft(row, row.feed[-1], room))
    return steps


def _force_draft(last: int, draft: list[int], link: int, cont: int) -> list[int]:
    """The draft with the forcing rule applied: a token after [LK] is [_CONTINUE_] (cut the draft there)."""
    previous = last
    for j, token in enumerate(draft):
        if previous == link and token != cont:
            return draft[:j] + [cont]
        previous = token
    return draft


def _commit(row: _Row, new: list[int], eos: set[int], link: int, fed: int) -> None:
    """Append `new` tokens to `row` (the first `fed` of them already went through the model), stopping
    at EOS or the row's budget. A row that stops on an unfed [LK] is flushed: one more pass for its state."""
    for j, token in enumerate(new):
        row.tokens.append(token)
        if token in eos or len(row.tokens) >= row.budget:
            row.flush = token == link and j >= fed
            row.done = not row.flush
            return
