"""Toy overfit: examples -> collator -> compute_loss -> AdamW on a tiny model, until the model writes
the marked text back and its [LK] vectors rank the right entity first among the KB's [SE] vectors.

Speed: the examples and the batch are built with the real tokenizer (49k tokens); the tiny model then
works in a compact vocabulary of just the token ids the toy data uses (a lookup table maps them), so a
training step costs milliseconds instead of a 49k-way softmax over every labelled token.

Generation forces only `[_CONTINUE_]` after `[LK]` (onegen.decoding.ForceContinue, as the official
inference does): its label is masked in training, so no model is taught to emit it unforced.
"""
import pytest
import torch
from transformers import LogitsProcessorList

from kb.entity import Entity
from onegen.collate import OneGenBatch, OneGenCollator
from onegen.data import build_examples
from onegen.decoding import ForceContinue
from onegen.loss import IGNORE_INDEX
from onegen.model import TokenIds, add_onegen_tokens
from onegen.prompts import entity_input_ids, mention_prompt
from onegen.train_step import compute_loss
from tiny import annotated_document, tiny_model, tiny_tokenizer

KB = {
    e.id: e
    for e in [
        Entity("Germany", "Germany", "Country in Central Europe."),
        Entity("France", "France", "Country in Western Europe."),
        Entity("Paris", "Paris", "Capital city of France."),
        Entity("Bonn", "Bonn", "City on the Rhine in Germany."),
        Entity("Rhine", "Rhine", "River of Europe."),
        Entity("Berlin", "Berlin", "Capital city of Germany."),
    ]
}
DOCS = [  # (text, [(surface, entity or None for NIL)]): one linked mention per sentence, one NIL
    ("Germany beat Spain .\nParis was calm .", [("Germany", "Germany"), ("Spain", None), ("Paris", "Paris")]),
    ("Bonn is old .\nThe Rhine is long .", [("Bonn", "Bonn"), ("Rhine", "Rhine")]),
]
MAX_STEPS = 300  # stops as soon as both checks pass; 100-125 steps for model seeds 0-5 (lr 1e-2, clipped)
CHECK_EVERY = 25


class Compact:
    """A bijection between the real token ids the toy data uses and 0..n-1."""

    def __init__(self, sequences: list[list[int]]):
        self.ids = sorted({t for seq in sequences for t in seq})
        self.table = torch.full((max(self.ids) + 1,), -1, dtype=torch.long)
        self.table[self.ids] = torch.arange(len(self.ids))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Real ids -> compact ids; IGNORE_INDEX stays."""
        return torch.where(ids == IGNORE_INDEX, ids, self.table[ids.clamp(min=0)])

    def token_ids(self, real: TokenIds) -> TokenIds:
        return TokenIds(*(int(self.table[getattr(real, f)]) for f in ("link", "entity", "cont")))


@pytest.fixture
def one_thread():
    """A hidden-size-32 model gains nothing from threads, and on a busy machine they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_toy_overfit_marks_text_and_ranks_entities(one_thread):
    tokenizer = tiny_tokenizer()
    real_ids = add_onegen_tokens(tiny_model(len(tokenizer)), tokenizer)
    docs = [annotated_document(f"doc{i}", text, spans) for i, (text, spans) in enumerate(DOCS)]
    examples = build_examples(docs, KB, tokenizer, real_ids, num_negatives=2, seed=0)
    assert [len(ex.anchors) for ex in examples] == [2, 2]  # every linked mention is an anchor
    real_batch = OneGenCollator(tokenizer, real_ids, KB, num_negatives=2, seed=0)(examples)
    prompts = [tokenizer(mention_prompt(tokenizer, d.text), add_special_tokens=False).input_ids for d in docs]
    entities = [entity_input_ids(tokenizer, e.title, e.description) for e in KB.values()]
    compact = Compact([ex.input_ids for ex in examples] + entities + [[tokenizer.eos_token_id]])
    token_ids = compact.token_ids(real_ids)
    prefix_targets = real_batch.prefix_targets.clone()  # (N, 3): column, token, count
    prefix_targets[:, 1] = compact(prefix_targets[:, 1])
    batch = OneGenBatch(**{**vars(real_batch), "input_ids": compact(real_batch.input_ids),
                           "labels": compact(real_batch.labels), "prefix_ids": compact(real_batch.prefix_ids),
                           "prefix_targets": prefix_targets})
    targets = [compact(torch.tensor(ex.input_ids[len(p):])).tolist() for ex, p in zip(examples, prompts)]
    eos = int(compact.table[tokenizer.eos_token_id])
    model = tiny_model(len(compact.ids), seed=0)

    def writes_marked_text() -> bool:
        for prompt, target in zip(prompts, targets):
            ids = compact(torch.tensor([prompt]))  # (1, P)
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target) + 5, do_sample=False,
                logits_processor=LogitsProcessorList([ForceContinue(token_ids.link, token_ids.cont)]),
                eos_token_id=eos, pad_token_id=eos,
            )
            if out[0, ids.shape[1]:].tolist() != target:
                return False
        return True

    def ranks_right_entity_first() -> bool:
        with torch.no_grad():
            vectors = []
            for seq in entities:  # the KB's [SE] vectors: last layer, final norm, at the last [SE]
                hidden = model(compact(torch.tensor([seq])), output_hidden_states=True).hidden_states[-1][0]
                vectors.append(hidden[-1])
            kb = torch.nn.functional.normalize(torch.stack(vectors), dim=-1)  # (6, D)
            for ex in examples:
                hidden = model(compact(torch.tensor([ex.input_ids])), output_hidden_states=True).hidden_states[-1][0]
                q = torch.nn.functional.normalize(hidden[ex.link_positions], dim=-1)  # (L, D)
                best = (q @ kb.T).argmax(-1).tolist()  # (L,)
                if [list(KB)[b] for b in best] != ex.link_entities:
                    return False
        return True

    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = last = None
    for step in range(1, MAX_STEPS + 1):
        model.train()
        last = compute_loss(model, batch, token_ids, kind="infonce", temperature=0.1)
        first = first or last
        optimizer.zero_grad()
        last.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % CHECK_EVERY == 0:
            model.eval()
            if writes_marked_text() and ranks_right_entity_first():
                break
    model.eval()
    assert writes_marked_text(), f"greedy generation does not reproduce the marked text after {step} steps"
    assert ranks_right_entity_first(), f"an [LK] vector does not rank its entity first after {step} steps"
    assert last.generation < first.generation / 10
