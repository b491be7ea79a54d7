"""OneGen training examples: target text, label masking, NIL policy, windows, anchors, negatives."""
import dataclasses

import pytest

from onegen.spans import Document, Mention
from kb.entity import Entity
from onegen.data import OneGenExample, build_examples, read_alias_table
from onegen.loss import IGNORE_INDEX
from onegen.model import add_onegen_tokens
from onegen.prompts import mention_prompt
from onegen.tokens import mark
from tiny import tiny_model, tiny_tokenizer

KB = {
    e.id: e
    for e in [
        Entity("Germany", "Germany", "Country in Central Europe."),
        Entity("Germany_national_football_team", "Germany national football team", "Men's football team."),
        Entity("France", "France", "Country in Western Europe."),
        Entity("France_(band)", "France", "A band."),
        Entity("France_national_football_team", "France national football team", "Men's football team."),
        Entity("Paris", "Paris", "Capital of France."),
        Entity("Berlin", "Berlin", "Capital of Germany."),
        Entity("Bonn", "Bonn", "City in Germany."),
        Entity("Rhine", "Rhine", "River."),
        Entity("Europe", "Europe", "Continent."),
    ]
}


def annotate(text: str, spans: list[tuple[str, str | None]], doc_id: str = "d") -> Document:
    """A document whose annotations are the given (surface, entity) pairs, found left to right."""
    annotations, pos = [], 0
    for surface, entity in spans:
        start = text.index(surface, pos)
        annotations.append(Mention(start, start + len(surface), surface, entity))
        pos = start + len(surface)
    return Document(doc_id, text, annotations)


@pytest.fixture(scope="module")
def tok():
    """The default tokenizer with the OneGen tokens added, and their ids."""
    tokenizer = tiny_tokenizer()
    token_ids = add_onegen_tokens(tiny_model(len(tokenizer)), tokenizer)
    return tokenizer, token_ids


def prompt_length(tokenizer, text: str) -> int:
    return len(tokenizer(mention_prompt(tokenizer, text), add_special_tokens=False).input_ids)


def test_target_marks_linked_mentions_and_labels_are_masked_exactly(tok):
    tokenizer, ids = tok
    doc = annotate(
        "Germany beat France in Paris , said Zwingmann in Atlantis .",
        [("Germany", "Germany"), ("France", "France"), ("Paris", "Paris"), ("Zwingmann", None),
         ("Atlantis", "Atlantis")],  # NIL, and an entity missing from the KB
    )
    [ex] = build_examples([doc], KB, tokenizer, ids)
    p = prompt_length(tokenizer, doc.text)
    assert ex.input_ids[:p] == tokenizer(mention_prompt(tokenizer, doc.text), add_special_tokens=False).input_ids
    expected = f"{mark('Germany')} beat {mark('France')} in {mark('Paris')} , said Zwingmann in Atlantis ."
    assert tokenizer.decode(ex.input_ids[p:]) == expected + tokenizer.eos_token
    assert ex.input_ids[-1] == tokenizer.eos_token_id
    after_link = {i + 1 for i in ex.link_positions}
    for i, (token, label) in enumerate(zip(ex.input_ids, ex.labels)):
        if i < p or i in after_link:
            assert label == IGNORE_INDEX, i
        else:
            assert label == token, i
    assert [ex.input_ids[i] for i in ex.link_positions] == [ids.link] * 3
    assert [ex.input_ids[i + 1] for i in ex.link_positions] == [ids.cont] * 3
    assert ex.link_entities == ["Germany", "France", "Paris"]
    assert (ex.doc_id, ex.start, ex.end) == ("d", 0, len(doc.text))


def test_document_without_linkable_mentions_copies_its_text(tok):
    tokenizer, ids = tok
    doc = annotate("Zwingmann met Atlantis officials .", [("Zwingmann", None), ("Atlantis", "Atlantis")])
    [ex] = build_examples([doc], KB, tokenizer, ids)
    assert tokenizer.decode(ex.input_ids[prompt_length(tokenizer, doc.text):]) == doc.text + tokenizer.eos_token
    assert ex.link_positions == ex.anchors == ex.negatives == []


def long_document(sentences: int, plain: int = 0) -> Document:
    """`plain` sentences without mentions, then `sentences` with three linked ones and a NIL each."""
    parts = [f"Week {i} passed quietly with nothing to report at all ." for i in range(plain)]
    spans = []
    for i in range(sentences):
        parts.append(f"In week {i} Germany met France near Bonn and the Rhine again .")
        spans += [("Germany", "Germany"), ("France", "France"), ("Bonn", "Bonn"), ("Rhine", None)]
    return annotate("\n".join(parts), spans, doc_id="long")


def test_windows_fit_max_length_and_cover_every_mention_once(tok):
    tokenizer, ids = tok
    doc = long_document(40, plain=40)  # uneven density: windows cut for the average overflow, get re-cut
    examples = build_examples([doc], KB, tokenizer, ids, max_length=300)
    assert len(examples) > 3
    assert all(len(ex.input_ids) <= 300 and len(ex.labels) == len(ex.input_ids) for ex in examples)
    starts = [ex.start for ex in examples]
    assert starts == sorted(starts) and examples[0].start == 0 and examples[-1].end == len(doc.text)
    for prev, ex in zip(examples, examples[1:]):
        assert prev.end <= ex.start and doc.text[prev.end:ex.start].strip() == ""  # no overlap, no gap
    assert sum(len(ex.link_entities) for ex in examples) == 3 * 40
    for ex in examples:  # the prompt holds exactly the window text
        window = doc.text[ex.start:ex.end]
        assert ex.input_ids[:prompt_length(tokenizer, window)] == tokenizer(
            mention_prompt(tokenizer, window), add_special_tokens=False).input_ids


def test_too_small_max_length_is_a_clear_error(tok):
    tokenizer, ids = tok
    with pytest.raises(ValueError, match="max_length"):
        build_examples([long_document(1)], KB, tokenizer, ids, max_length=20)


def test_one_anchor_per_sentence(tok):
    tokenizer, ids = tok
    doc = annotate(
        "Germany beat France . Paris is far from Bonn and Berlin .\nNothing here .\nEurope .",
        [("Germany", "Germany"), ("France", "France"), ("Paris", "Paris"), ("Bonn", "Bonn"), ("Berlin", "Berlin"),
         ("Europe", "Europe")],
    )
    for seed in range(10):
        [ex] = build_examples([doc], KB, tokenizer, ids, seed=seed)
        assert len(ex.anchors) == len(ex.negatives) == 3
        assert ex.anchors[0] in (0, 1) and ex.anchors[1] in (2, 3, 4) and ex.anchors[2] == 5


def test_hard_negatives_alias_then_title_then_random_never_positive(tok):
    tokenizer, ids = tok
    doc = annotate("France beat Germany .\nRhine .", [("France", "France"), ("Germany", "Germany"), ("Rhine", "Rhine")])
    aliases = {"France": ["France", "France_national_football_team", "Not_in_kb"],
               "Germany": ["Germany_national_football_team"]}
    for seed in range(6):
        [ex] = build_examples([doc], KB, tokenizer, ids, aliases=aliases, num_negatives=3, seed=seed)
        by_anchor = dict(zip((ex.link_entities[k] for k in ex.anchors), ex.negatives))
        if "France" in by_anchor:
            assert by_anchor["France"][:2] == ["France_national_football_team", "France_(band)"]  # alias, then title
        if "Germany" in by_anchor:
            assert by_anchor["Germany"][0] == "Germany_national_football_team"
        for positive, negatives in by_anchor.items():
            assert len(negatives) == len(set(negatives)) == 3
            assert positive not in negatives and all(n in KB for n in negatives)


def test_same_seed_same_examples_other_seed_other_choices(tok):
    tokenizer, ids = tok
    docs = [long_document(6), annotate("Germany beat France .", [("Germany", "Germany"), ("France", "France")], "b")]
    first = build_examples(docs, KB, tokenizer, ids, max_length=400, seed=1)
    assert build_examples(docs, KB, tokenizer, ids, max_length=400, seed=1) == first
    others = [build_examples(docs, KB, tokenizer, ids, max_length=400, seed=s) for s in range(2, 6)]
    assert any([(e.anchors, e.negatives) for e in o] != [(e.anchors, e.negatives) for e in first] for o in others)
    assert all([e.input_ids for e in o] == [e.input_ids for e in first] for o in others)


def test_examples_round_trip_through_dicts(tok):
    tokenizer, ids = tok
    [ex] = build_examples([annotate("Germany beat France .", [("Germany", "Germany")])], KB, tokenizer, ids)
    assert OneGenExample(**dataclasses.asdict(ex)) == ex


def test_tokenizer_without_onegen_tokens_is_a_clear_error(tok):
    _, ids = tok
    with pytest.raises(ValueError, match="add_onegen_tokens"):
        build_examples([annotate("Germany won .", [("Germany", "Germany")])], KB, tiny_tokenizer(), ids)


def test_read_alias_table(tmp_path):
    path = tmp_path / "aliases.tsv"
    rows = ["Paris\tParis\t5", "Paris\tParis_Hilton\t9", "Bonn\tBonn\t1", "Paris\tParis,_Texas\t5"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert read_alias_table(path) == {"Paris": ["Paris_Hilton", "Paris", "Paris,_Texas"], "Bonn": ["Bonn"]}
    path.write_text("Paris\tParis\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"aliases.tsv:1: expected"):
        read_alias_table(path)


def test_reads_the_shared_alias_table(shared_data):
    aliases = read_alias_table(shared_data / "kb" / "aida_train_aliases.tsv")
    assert len(aliases) > 1000
    assert all(entities and len(entities) == len(set(entities)) for entities in aliases.values())


def test_overlapping_mentions_keep_the_first(tok):
    tokenizer, ids = tok
    spans = [Mention(0, 12, "Paris France", "France"), Mention(6, 12, "France", "France")]
    doc = Document("o", "Paris France won .", spans)
    [ex] = build_examples([doc], KB, tokenizer, ids)
    assert tokenizer.decode(ex.input_ids[prompt_length(tokenizer, doc.text):]) == (
        f"{mark('Paris France')} won ." + tokenizer.eos_token)
