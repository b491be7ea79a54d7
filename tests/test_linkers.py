"""The linker registry, the alias prior, the KB title index and the spaCy baseline linker."""
import json
import sys

import pytest

from eval.linkers import LINKER_NAMES, BaselineLinker, get_linker, read_title_index
from kb.aliases import AliasTable
from onegen.spans import Mention

ALIASES = "\n".join([
    "German\tGermany\t40",
    "German\tGerman_language\t2",
    "Helmut Kohl\tHelmut_Kohl\t5",
    "KOHL\tHelmut_Kohl\t1",
    "Kohl\tHelmut_Kohl\t2",
    "kohl\tKohl_(vegetable)\t2",
    "European Union\tEuropean_Union\t9",
    "Paris\tParis_Hilton\t1",
    "Paris\tParis\t1",
]) + "\n"
KB = [
    {"id": "Brussels", "title": "Brussels", "description": "Capital of Belgium.", "popularity": 900},
    {"id": "Brussels_(band)", "title": "Brussels (band)", "description": "", "popularity": 3},
    {"id": "Washington", "title": "Washington", "popularity": 10},
    {"id": "Washington_(state)", "title": "Washington", "popularity": 50},  # same title: more popular wins
    {"id": "New_York_City", "title": "New York City", "popularity": 1000},
]


@pytest.fixture
def paths(tmp_path):
    aliases, kb = tmp_path / "aliases.tsv", tmp_path / "entities.jsonl"
    aliases.write_text(ALIASES, encoding="utf-8")
    kb.write_text("".join(json.dumps(e) + "\n" for e in KB), encoding="utf-8")
    return {"aliases": aliases, "kb": kb}


def test_unknown_linker_lists_choices():
    with pytest.raises(ValueError, match="unknown linker 'gpt'.*baseline, onegen"):
        get_linker("gpt")
    assert LINKER_NAMES == ("baseline", "onegen")


def test_unknown_option_is_named(paths):
    with pytest.raises(ValueError, match="'baseline' does not take option.*nil_threshold.*takes: aliases, kb"):
        get_linker("baseline", nil_threshold=0.5, **paths)


def test_onegen_import_failure_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "onegen.linker", None)  # makes `import onegen.linker` fail
    with pytest.raises(ImportError, match="'onegen' linker needs onegen.Linker.*--linker baseline"):
        get_linker("onegen", kb="kb.jsonl")


def test_alias_prior_exact_then_case_insensitive(paths):
    prior = AliasTable.from_tsv(paths["aliases"])
    assert prior.most_frequent("German") == "Germany"  # most frequent entity of the exact string
    assert prior.most_frequent("kohl") == "Kohl_(vegetable)"  # exact string wins over other casings
    assert prior.most_frequent("KoHL") == "Helmut_Kohl"  # casefolded counts summed: Helmut_Kohl 3 vs vegetable 2
    assert prior.most_frequent("Paris") == "Paris"  # a tie goes to the smallest id, deterministically
    assert prior.most_frequent("Brussels") is None


def test_alias_table_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("German\tGermany\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected mention<TAB>entity<TAB>count"):
        AliasTable.from_tsv(bad)
    with pytest.raises(FileNotFoundError, match="alias table not found"):
        AliasTable.from_tsv(tmp_path / "missing.tsv")


def test_title_index_by_title_and_id(paths):
    titles = read_title_index(paths["kb"])
    assert titles["Brussels"] == "Brussels" and titles["Brussels (band)"] == "Brussels_(band)"
    assert titles["New_York_City"] == titles["New York City"] == "New_York_City"
    assert titles["Washington"] == "Washington_(state)"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kb")
    (folder / "aliases.tsv").write_text(ALIASES, encoding="utf-8")
    (folder / "entities.jsonl").write_text("".join(json.dumps(e) + "\n" for e in KB), encoding="utf-8")
    return get_linker("baseline", aliases=folder / "aliases.tsv", kb=folder / "entities.jsonl")


def test_baseline_links_names_only(baseline):
    texts = ["German chancellor Helmut Kohl met Bill Clinton in Brussels on Monday.",
             "The talks at the European Union ended on 3 May with 200 million dollars agreed.",
             ""]
    first, second, empty = baseline.link(texts)
    assert isinstance(baseline, BaselineLinker)
    # alias prior, alias prior, no match (emitted as NIL), KB title; the DATE "Monday" is not a name
    assert first == [Mention(0, 6, "German", "Germany"), Mention(18, 29, "Helmut Kohl", "Helmut_Kohl"),
                     Mention(34, 46, "Bill Clinton", None), Mention(50, 58, "Brussels", "Brussels")]
    # the leading "the" is cut off; DATE and MONEY entities are dropped
    assert second == [Mention(17, 31, "European Union", "European_Union")]
    assert empty == []
    for text, annotations in zip(texts, (first, second)):
        assert all(text[a.start:a.end] == a.surface for a in annotations)
