"""OneGen training examples from annotated documents and a KB (DESIGN section 2).

One example per sentence-aware window of a document:
- input: the chat-templated mention-detection prompt over the window text, then the target: the
  window text with each linked mention re-written as `<MENTION>m</MENTION>[LK][_CONTINUE_]`, then EOS;
- labels: -100 on the prompt and on the token right after each `[LK]` (the `[_CONTINUE_]`, forced at
  decode time); every other target token, `[LK]` and EOS included, is a label;
- retrieval: the position and gold entity of every `[LK]`, one anchor mention per sentence, and
  `num_negatives` hard negatives per anchor.

NIL policy: a mention is marked only when it is linkable, i.e. its entity is not None (NIL) and is in
the KB. NIL mentions and mentions of entities outside the KB stay plain text, so the model learns to
mark what it can link (GERBIL InKB scoring counts a linked NIL span as a false positive). A mention
that a window edge cuts (possible only inside a sentence split for length), or that overlaps an
earlier linkable mention, also stays plain text.

Hard negatives of an anchor, in order: the entities its surface string refers to in the alias table
(most frequent first), then KB entities whose title equals the surface case-insensitively, then random
KB entities; the positive is never one. The collator replaces any that is a positive of its batch.

Examples are plain dataclasses of lists: `dataclasses.asdict(ex)` is JSON, `OneGenExample(**d)` reads it
back (to carry training data to a GPU machine as JSONL).
"""
from __future__ import annotations

import bisect
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onegen.spans import Document, Mention
from kb.aliases import AliasTable
from kb.entity import Entity
from onegen.chunking import Window, sentence_spans, sentence_windows
from onegen.loss import IGNORE_INDEX
from onegen.prompts import mention_prompt
from onegen.tokens import mark

if TYPE_CHECKING:
    from onegen.model import TokenIds


@dataclass
class OneGenExample:
    """One training window: the mention sequence and its retrieval annotations."""

    doc_id: str  # Document.doc_id of the source document
    start: int  # window start: char offset into the document text
    end: int  # window end (exclusive)
    input_ids: list[int]  # prompt + marked target + EOS
    labels: list[int]  # same length; IGNORE_INDEX on the prompt and on the token after each [LK]
    link_positions: list[int]  # index in input_ids of each [LK], in text order
    link_entities: list[str]  # gold entity id of each [LK] (always in the KB)
    anchors: list[int]  # indices into link_positions used by the retrieval loss: one per sentence
    negatives: list[list[str]]  # hard-negative entity ids per anchor, num_negatives each


def marked_target(text: str, spans: Sequence[tuple[int, int]], window: Window) -> str:
    """The model's output for `text[window.start:window.end]` (EOS not included): the window text with each
    (start, end) of `spans` (full-text offsets, inside the window, in text order, not overlapping) re-written
    as `<MENTION>surface</MENTION>[LK][_CONTINUE_]`. Training targets and teacher forcing use it."""
    pieces = []
    pos = window.start
    for start, end in spans:
        pieces += [text[pos:start], mark(text[start:end])]
        pos = end
    pieces.append(text[pos:window.end])
    return "".join(pieces)


def read_alias_table(path: str | Path) -> dict[str, list[str]]:
    """Read a `mention<TAB>entity<TAB>count` TSV into mention -> entity ids, most frequent first (ties by id)."""
    table = AliasTable.from_tsv(path)
    return {mention: table.entities(mention) for mention in table.counts}


def build_examples(
    docs: list[Document],
    entities: Mapping[str, Entity],
    tokenizer,
    token_ids: TokenIds,
    *,
    max_length: int = 1024,
    aliases: Mapping[str, list[str]] | None = None,
    num_negatives: int = 4,
    seed: int = 0,
) -> list[OneGenExample]:
    """OneGen examples of `docs`, each window's prompt + target within `max_length` tokens.

    Args:
        docs: annotated documents (eval readers: AIDA TSV, NIF).
        entities: the KB, id -> Entity; positives and negatives are drawn from it.
        tokenizer: the model's tokenizer, with the OneGen tokens added (`add_onegen_tokens`).
        token_ids: ids of the OneGen tokens in `tokenizer`.
        max_length: token budget of one example (prompt + target + EOS).
        aliases: mention string -> entity ids, most frequent first (`read_alias_table`).
        num_negatives: hard negatives per anchor.
        seed: the same seed and inputs give the same examples.
    """
    builder = _Builder(entities, tokenizer, token_ids, max_length, aliases or {}, num_negatives, seed)
    return [ex for doc in docs for ex in builder.document(doc)]


class _Builder:
    """State shared by the documents of one `build_examples` call: tokenizer, KB lookups."""

    def __init__(self, entities, tokenizer, token_ids, max_length, aliases, num_negatives, seed):
        self.entities = entities
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.max_length = max_length
        self.aliases = aliases
        self.num_negatives = num_negatives
        self.seed = seed
        self.entity_ids = sorted(entities)  # random fill draws from this fixed order
        self.by_title: dict[str, list[str]] = defaultdict(list)  # lower-cased title -> ids
        for entity_id in self.entity_ids:
            self.by_title[entities[entity_id].title.lower()].append(entity_id)
        if num_negatives >= len(self.entity_ids):
            raise ValueError(
                f"num_negatives={num_negatives} needs a KB of more than {num_negatives} entities, got "
                f"{len(self.entity_ids)}"
            )
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token; set one before building examples")
        self.eos = eos
        self.overhead = len(self._prompt_ids("")) + 1  # prompt without text, plus EOS
        self.markup = len(self._text_ids(mark("x"))) - len(self._text_ids("x"))  # tokens added per mention
        if self.overhead >= max_length:
            raise ValueError(f"max_length={max_length} does not even hold the empty prompt ({self.overhead} tokens)")

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _prompt_ids(self, text: str) -> list[int]:
        return self._text_ids(mention_prompt(self.tokenizer, text))  # the template carries BOS if any

    def document(self, doc: Document) -> list[OneGenExample]:
        linked: list[Mention] = []  # linkable mentions in text order; one overlapping an earlier one is dropped
        for a in sorted(doc.mentions, key=lambda a: (a.start, a.end)):
            if a.entity_id is not None and a.entity_id in self.entities and (not linked or a.start >= linked[-1].end):
                linked.append(a)
        sentences = sentence_spans(doc.text)
        # Text tokens per window: the text appears twice (prompt and target), plus the markup of its
        # mentions at the document's density; a window that still comes out too long is re-cut.
        density = len(linked) / max(1, len(self._text_ids(doc.text)))  # linked mentions per text token
        budget = max(1, int((self.max_length - self.overhead) / (2 + self.markup * density)))
        examples = []
        start = 0  # the windows of doc.text[start:] are still to make
        while True:
            rest = [(max(s, start) - start, e - start) for s, e in sentences if e > start]  # sentences of text[start:]
            windows = sentence_windows(doc.text[start:], budget, self._count, overlap_sentences=0, sentences=rest)
            for w in windows:
                example = self._example(doc, linked, sentences, Window(start + w.start, start + w.end))
                if len(example.input_ids) <= self.max_length:
                    examples.append(example)
                    continue
                # Denser than estimated: re-cut the rest of the document with a smaller budget.
                room, used = self.max_length - self.overhead, len(example.input_ids) - self.overhead
                budget = min(budget - 1, budget * room // used)
                if budget < 1:
                    raise ValueError(
                        f"document {doc.doc_id!r}: max_length={self.max_length} cannot hold one token of text with its "
                        f"markup and the prompt ({self.overhead} tokens); raise max_length"
                    )
                start = example.start
                break
            else:
                return examples

    def _count(self, text: str) -> int:
        return len(self._text_ids(text))

    def _example(self, doc: Document, linked: list[Mention], sentences, window: Window) -> OneGenExample:
        mentions = [a for a in linked if window.start <= a.start and a.end <= window.end]
        prompt = self._prompt_ids(doc.text[window.start:window.end])
        target = self._text_ids(marked_target(doc.text, [(a.start, a.end) for a in mentions], window)) + [self.eos]
        input_ids = prompt + target
        link_positions = [i for i, t in enumerate(input_ids) if t == self.token_ids.link]
        if len(link_positions) != len(mentions) or any(
            i + 1 >= len(input_ids) or input_ids[i + 1] != self.token_ids.cont for i in link_positions
        ):
            raise ValueError(
                f"document {doc.doc_id!r}: expected {len(mentions)} [LK][_CONTINUE_] token pairs in the example, "
                f"found {len(link_positions)} [LK]; add the OneGen tokens to the tokenizer (add_onegen_tokens) "
                "and pass its token_ids"
            )
        labels = [IGNORE_INDEX] * len(prompt) + target
        for i in link_positions:
            labels[i + 1] = IGNORE_INDEX  # [_CONTINUE_] is forced at decode time, never predicted
        rng = random.Random(f"{self.seed}:{doc.doc_id}:{window.start}")
        anchors = self._anchors(mentions, sentences, rng)
        return OneGenExample(
            doc_id=doc.doc_id,
            start=window.start,
            end=window.end,
            input_ids=input_ids,
            labels=labels,
            link_positions=link_positions,
            link_entities=[a.entity_id for a in mentions],
            anchors=anchors,
            negatives=[self._negatives(mentions[k], rng) for k in anchors],
        )

    @staticmethod
    def _anchors(mentions: list[Mention], sentences: list[tuple[int, int]], rng: random.Random) -> list[int]:
        """One mention index per sentence that has linked mentions, drawn by `rng`."""
        starts = [s for s, _ in sentences]
        by_sentence: dict[int, list[int]] = defaultdict(list)
        for k, a in enumerate(mentions):
            by_sentence[bisect.bisect_right(starts, a.start) - 1].append(k)
        return [rng.choice(by_sentence[s]) for s in sorted(by_sentence)]

    def _negatives(self, mention: Mention, rng: random.Random) -> list[str]:
        """Same-alias entities, then same-title ones, then random KB entities; never the positive."""
        chosen: list[str] = []
        for candidate in (*self.aliases.get(mention.surface, ()), *self.by_title.get(mention.surface.lower(), ())):
            if len(chosen) == self.num_negatives:
                return chosen
            if candidate != mention.entity_id and candidate in self.entities and candidate not in chosen:
                chosen.append(candidate)
        while len(chosen) < self.num_negatives:
            candidate = self.entity_ids[rng.randrange(len(self.entity_ids))]
            if candidate != mention.entity_id and candidate not in chosen:
                chosen.append(candidate)
        return chosen
