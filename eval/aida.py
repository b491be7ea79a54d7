"""Reader for the original AIDA-CoNLL-YAGO TSV (`AIDA-YAGO2-dataset.tsv`, format in shared/data/aida/README.md).

Document text is rebuilt from the CoNLL tokens: tokens of a sentence joined by one space,
sentences joined by one newline ("\n"), no trailing newline. A mention's tokens are
consecutive tokens of one sentence, so `text[start:end]` equals the mention string of column 3
exactly (checked while reading). Entity ids come from column 5 (the Wikipedia URL) through
`canonical_id`; `--NME--` mentions have entity_id None.
"""
from __future__ import annotations

import re
from pathlib import Path

from kb.ids import canonical_id
from onegen.spans import Document, Mention

SPLITS = ("train", "testa", "testb")
NIL_MARK = "--NME--"
DOCSTART = re.compile(r"^-DOCSTART- \((?P<doc_id>.*)\)$")


def split_of(doc_id: str) -> str:
    """The split an AIDA doc id belongs to: `947testa CRICKET` -> testa, `1 EU` -> train."""
    number = doc_id.split(" ", 1)[0]
    for split in ("testa", "testb"):
        if number.endswith(split):
            return split
    return "train"


class _DocBuilder:
    """Accumulates the tokens and mentions of one document while the file is read."""

    def __init__(self, doc_id: str):
        self.doc_id = doc_id
        self.sentences: list[list[str]] = [[]]  # tokens per sentence; the last one is open
        self.mentions: list[tuple[int, int, int, str, str | None]] = []  # (sentence, first token, end token, string, id)

    def add_token(self, columns: list[str], where: str) -> None:
        """Add one token line (its tab-separated columns); `where` is file:line for error messages."""
        token, sentence = columns[0], self.sentences[-1]
        if len(columns) > 1:
            tag, mention = columns[1], columns[2]
            if tag == "B":
                if columns[3] != NIL_MARK and len(columns) < 5:
                    raise ValueError(f"{where}: linked mention {mention!r} has no Wikipedia URL (column 5)")
                entity = None if columns[3] == NIL_MARK else canonical_id(columns[4])
                self.mentions.append((len(self.sentences) - 1, len(sentence), len(sentence) + 1, mention, entity))
            elif tag == "I" and self.mentions and self.mentions[-1][0] == len(self.sentences) - 1 \
                    and self.mentions[-1][2] == len(sentence):  # the last mention ends right before this token
                s, first, end, string, entity = self.mentions[-1]
                self.mentions[-1] = (s, first, end + 1, string, entity)
            else:
                raise ValueError(f"{where}: tag {tag!r} of token {token!r} does not start (B) or continue (I) a mention")
        sentence.append(token)

    def end_sentence(self) -> None:
        if self.sentences[-1]:
            self.sentences.append([])

    def build(self) -> Document:
        sentences = [s for s in self.sentences if s]
        # character offset of every token: tokens joined by " ", sentences by "\n"
        starts: list[list[int]] = []
        pos = 0
        for sentence in sentences:
            row = []
            for token in sentence:
                row.append(pos)
                pos += len(token) + 1
            starts.append(row)
        text = "\n".join(" ".join(s) for s in sentences)
        annotations = []
        for s, first, end, string, entity in self.mentions:
            start = starts[s][first]
            stop = starts[s][end - 1] + len(sentences[s][end - 1])
            if text[start:stop] != string:
                raise ValueError(f"AIDA document {self.doc_id!r}: mention string {string!r} does not match its tokens "
                                 f"{text[start:stop]!r}; the TSV file is corrupt")
            annotations.append(Mention(start, stop, string, entity))
        return Document(self.doc_id, text, annotations)


def read_aida(path: str | Path, split: str | None = None) -> list[Document]:
    """Documents of an AIDA-CoNLL-YAGO TSV file in file order, all or one split (train, testa, testb)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown AIDA split {split!r}; choose one of {', '.join(SPLITS)} (or None for all)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AIDA TSV file not found: {path}")
    docs: list[Document] = []
    current: _DocBuilder | None = None
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            where = f"{path}:{lineno}"
            start = DOCSTART.match(line)
            if start:
                if current is not None:
                    docs.append(current.build())
                current = _DocBuilder(start.group("doc_id"))
            elif not line:
                if current is not None:
                    current.end_sentence()
            else:
                if current is None:
                    raise ValueError(f"{where}: token before the first '-DOCSTART- (<doc id>)' line; is this an AIDA TSV file?")
                columns = line.split("\t")
                if len(columns) not in (1, 4, 6, 7):
                    raise ValueError(f"{where}: expected 1, 4, 6 or 7 tab-separated columns, got {len(columns)}")
                current.add_token(columns, where)
    if current is not None:
        docs.append(current.build())
    if split is not None:
        docs = [d for d in docs if split_of(d.doc_id) == split]
    return docs
