"""onegen.titles: the KB's titles as its ids spell them, and the union spans that are one replacing the model's pieces."""
import numpy as np
import pytest

from onegen.linker import Linker
from onegen.linker_config import LinkerConfig
from onegen.spans import Annotated, EmbeddedMention
from onegen.titles import Titles, joined_titles


def test_titles_are_the_ids_titles_with_and_without_qualifier_case_aside():
    titles = Titles.from_ids(["Brigham_Young_University", "Paris_(band)", "New_York_City"])
    assert "Brigham Young University" in titles and "BRIGHAM  young university" in titles
    assert "Paris" in titles and "Paris (band)" in titles and "New York City" in titles
    assert "band" not in titles and "Brigham Young" not in titles and "" not in titles


def test_a_name_counts_the_entities_it_names_as_a_title_or_a_redirect():
    redirects = [("City_of_Light", "Paris"), ("Paris_(France)", "Paris"), ("PARIS", "Paris"), ("Gone", "Not_in_the_KB"),
                 ("City_of_light", "Paris")]  # the same name twice: one link
    names = Titles.from_ids(["Paris", "Paris_(band)", "Rome"], redirects)
    # Paris and Paris_(band) by their titles; Paris once, though "Paris (France)" and "PARIS" redirect to it
    assert names.count("paris") == 2 and names.count("Paris (France)") == 1
    assert names.count("Paris (band)") == 1 and names.count("city of  light") == 1 and names.count("Gone") == 0
    assert names.names("City of Light", "Paris") and names.names("paris", "Paris_(band)")
    assert not names.names("City of Light", "Rome") and not names.names("Rome", "Paris")
    assert "City of Light" not in names  # a redirect's name is a name, not a title (title_spans)
    assert Titles.from_ids(["Paris"]).count("City of Light") == 0  # no redirects given: titles only


def test_the_kbs_aliases_are_names_of_their_entity_each_counted_once():
    aliases = [("City of Light", "Paris"), ("city of  LIGHT", "Paris"), ("Paris", "Paris"), ("Eternal City", "Rome"),
               ("Big Apple", "New_York_City"), ("", "Rome")]
    names = Titles.from_ids(["Paris", "Rome", "New_York_City"], [("City_of_Light", "Paris")], aliases)
    # the alias that repeats a redirect's name, and the one that is Paris's own title, add no link
    assert names.count("City of Light") == 1 and names.count("paris") == 1 and names.count("") == 0
    assert names.names("eternal city", "Rome") and names.names("Big Apple", "New_York_City")
    assert not names.names("Eternal City", "Paris") and "Big Apple" not in names  # an alias is no title


def annotated(text: str, *words: str) -> Annotated:
    """The model's mentions: each of `words`, at its first place in `text`."""
    spans = [(text.index(w), text.index(w) + len(w)) for w in words]
    return Annotated(text, [EmbeddedMention(s, e, text[s:e], np.zeros(2, np.float32)) for s, e in spans])


@pytest.mark.parametrize("title_spans", [True, False])
def test_a_union_span_that_is_a_title_replaces_the_models_mentions_inside_it_and_no_other(title_spans):
    text = "Brigham Young University beat Utah State in Logan Utah ."
    found = annotated(text, "Brigham", "Young", "University", "Utah", "Logan Utah")
    linker = Linker(None, None, LinkerConfig(title_spans=title_spans),
                    titles=Titles.from_ids(["Brigham_Young_University", "Utah_State_University", "Logan,_Utah", "Logan"]))
    spans = {"Brigham Young University": (0, 24), "Utah State": (30, 40), "in Logan": (41, 49)}
    given = linker._given_spans(sorted(spans.values()), found)
    if title_spans:  # a title holding model mentions whole replaces them
        assert given == [spans["Brigham Young University"]]
        assert [m.surface for m in found.mentions] == ["Utah", "Logan Utah"]
    else:  # only spans overlapping no model mention are added
        assert given == [] and len(found.mentions) == 5
    # "Utah State" holds "Utah" but is no title; "in Logan" cuts "Logan Utah": neither replaces anything


@pytest.mark.parametrize("split_spans", [True, False])
def test_union_spans_inside_a_model_mention_that_is_no_title_replace_it(split_spans):
    """Role words: "President Boris Yeltsin" is no KB title and gives way to the NER's "Boris Yeltsin"; the
    model's "Bank of England" is a title and keeps its span although "England" lies inside it."""
    text = "President Boris Yeltsin met the Bank of England and Governor Coles Bashford ."
    found = annotated(text, "President Boris Yeltsin", "Bank of England", "Governor Coles Bashford")
    linker = Linker(None, None, LinkerConfig(split_spans=split_spans),
                    titles=Titles.from_ids(["Boris_Yeltsin", "Bank_of_England", "England", "Coles_Bashford"]))
    spans = [(text.index(w), text.index(w) + len(w)) for w in ("Boris Yeltsin", "England", "Coles Bashford")]
    given = linker._given_spans(spans, found)
    if split_spans:
        assert [text[s:e] for s, e in given] == ["Boris Yeltsin", "Coles Bashford"]
        assert [m.surface for m in found.mentions] == ["Bank of England"]
    else:  # the model's extent wins
        assert given == [] and len(found.mentions) == 3


def test_title_spans_and_split_spans_each_do_only_their_own_replacement():
    text = "Brigham Young University hired President Boris Yeltsin ."
    titles = Titles.from_ids(["Brigham_Young_University", "Boris_Yeltsin"])
    spans = [(0, 24), (text.index("Boris"), text.index("Boris") + len("Boris Yeltsin"))]
    for title_spans, split_spans, expected in [(True, False, ["Brigham Young University"]),
                                               (False, True, ["Boris Yeltsin"]),
                                               (True, True, ["Brigham Young University", "Boris Yeltsin"])]:
        found = annotated(text, "Brigham", "Young", "University", "President Boris Yeltsin")
        linker = Linker(None, None, LinkerConfig(title_spans=title_spans, split_spans=split_spans), titles=titles)
        assert [text[s:e] for s, e in linker._given_spans(spans, found)] == expected


def spans_of(text: str, *words: str) -> list[tuple[int, int]]:
    return [(text.index(w), text.index(w) + len(w)) for w in words]


def test_two_neighbouring_spans_that_spell_a_title_as_written_are_joined():
    titles = Titles.from_ids(["Long_Beach,_California", "Springfield,_Illinois", "Paris,_Texas", "Texas,_USA", "OFK_Kikinda",
                              "Dallas,_Texas"])
    text = "Born in Long Beach, California, raised in Springfield , Illinois and Paris, Texas, USA by OFK Kikinda, Texas."
    pieces = spans_of(text, "Long Beach", "California", "Springfield", "Illinois", "Paris", "Texas", "USA", "OFK",
                      "Kikinda") + [(text.rindex("Texas"), len(text) - 1)]
    # "Springfield , Illinois" is no title as written; "Texas, USA" overlaps "Paris, Texas", joined first
    assert [text[s:e] for s, e in joined_titles(text, pieces, titles)] == [
        "Long Beach, California", "Paris, Texas", "OFK Kikinda"]
    assert joined_titles(text, spans_of(text, "Beach", "California"), titles) == []  # no title
    # a span cutting across the title rules it out; the same span marked twice (the model's and the NER's) does not
    assert joined_titles(text, spans_of(text, "Long Beach", "California", "Beach, California"), titles) == []
    assert joined_titles(text, spans_of(text, "Long Beach", "California", "Long Beach"), titles) == spans_of(
        text, "Long Beach, California")
    assert joined_titles(text, spans_of(text, "Long Beach", "Illinois"), titles) == []  # words between: no neighbours
    table = "Long Beach\nCalifornia"  # a line break between: two rows of a table
    assert joined_titles(table, spans_of(table, "Long Beach", "California"), titles) == []


@pytest.mark.parametrize("join", [True, False])
def test_a_title_spelled_by_a_model_mention_and_a_neighbouring_ner_span_replaces_both(join):
    text = "He was born in Long Beach, California, and moved to Utah."
    found = annotated(text, "Long Beach", "Utah")
    linker = Linker(None, None, LinkerConfig(title_spans=True, split_spans=True),
                    titles=Titles.from_ids(["Long_Beach,_California", "Utah"]))
    given = linker._given_spans(spans_of(text, "California"), found, join=join)
    if join:
        assert [text[s:e] for s, e in given] == ["Long Beach, California"]
        assert [m.surface for m in found.mentions] == ["Utah"]
    else:  # spans as given: the NER's span is added, the model's kept
        assert [text[s:e] for s, e in given] == ["California"] and len(found.mentions) == 2


def test_pieces_a_title_span_replaced_first_are_joined_as_that_span():
    """The NER's "Long Beach" replaces the model's "Long" and "Beach" (a title holding them), then joins "California"."""
    text = "He was born in Long Beach, California, and moved to Utah."
    found = annotated(text, "Long", "Beach", "California", "Utah")
    linker = Linker(None, None, LinkerConfig(title_spans=True, split_spans=True),
                    titles=Titles.from_ids(["Long_Beach,_California", "Long_Beach", "Utah"]))
    given = linker._given_spans(spans_of(text, "Long Beach"), found, join=True)
    assert [text[s:e] for s, e in given] == ["Long Beach, California"] and [m.surface for m in found.mentions] == ["Utah"]


def test_the_linker_embeds_the_title_span_in_place_of_the_pieces(tmp_path):
    """Through `Linker.embed` with the tiny model: the pieces the model marked ("Par", "is") give way to the
    NER span "Paris", a KB title, embedded by teacher forcing and recorded with the span source."""
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen

    tokenizer = tiny_tokenizer()
    onegen = OneGen(tiny_model(len(tokenizer) + 3), tokenizer)
    linker = Linker(onegen, None, LinkerConfig(title_spans=True, mentions="union"),
                    titles=Titles.from_ids(["Paris", "Rome", "Berlin"]))
    text = "Paris and Rome."
    linker._decode = lambda texts, batch_size, windows: [annotated(text, "Par", "is", "Rome")]  # what the model marked
    (out,) = linker.embed([text], [[(0, 5)]], mentions="union", span_source="ner")
    assert [(m.surface, m.source) for m in out.mentions] == [("Paris", "ner"), ("Rome", "model")]
    assert np.linalg.norm(out.mentions[0].vector) == pytest.approx(1.0, abs=1e-4)  # a real [LK] vector


def test_only_spans_the_linker_finds_are_joined_not_the_ones_a_caller_gives_to_link_as_they_are():
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen

    tokenizer = tiny_tokenizer()
    onegen = OneGen(tiny_model(len(tokenizer) + 3), tokenizer)
    linker = Linker(onegen, None, LinkerConfig(title_spans=True, split_spans=True, mentions="union"),
                    titles=Titles.from_ids(["Long_Beach,_California", "California"]))
    text = "Long Beach, California."
    linker._decode = lambda texts, batch_size, windows: [annotated(text, "Long Beach")]
    (union,) = linker.embed([text], [spans_of(text, "California")], mentions="union")
    (given,) = linker.embed([text], [spans_of(text, "Long Beach", "California")], mentions="given")
    assert [m.surface for m in union.mentions] == ["Long Beach, California"]
    assert [m.surface for m in given.mentions] == ["Long Beach", "California"]


def test_the_link_jobs_replica_gets_the_titles_it_is_given(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    from onegen.model import OneGen
    from onegen.pipeline.stages import onegen_annotator

    tokenizer = tiny_tokenizer()
    OneGen(tiny_model(len(tokenizer) + 3), tokenizer).save_pretrained(tmp_path / "model")
    titles = Titles.from_ids(["Paris"])
    with_titles = onegen_annotator(str(tmp_path / "model"), 2, mentions="union", titles=titles)
    assert with_titles.func.__self__.titles is titles and with_titles.keywords == {"span_source": "ner"}
    assert onegen_annotator(str(tmp_path / "model"), 2, mentions="union").func.__self__.titles is None
    split = onegen_annotator(str(tmp_path / "model"), 2, mentions="union", titles=titles, title_spans=False,
                             split_spans=True).func.__self__.config
    assert (split.title_spans, split.split_spans) == (False, True)


def test_a_name_lists_the_entities_it_names_as_many_as_it_counts():
    aliases = [("Big Apple", "New_York_City"), ("Big Apple", "Big_Apple_(album)")]
    names = Titles.from_ids(["Paris", "Paris_(band)", "Rome", "New_York_City", "Big_Apple_(album)"],
                            [("City_of_Light", "Paris"), ("Paris_(France)", "Paris")], aliases)
    assert names.entities("PARIS") == ["Paris", "Paris_(band)"]  # by its titles; Paris once
    assert names.entities("city of light") == ["Paris"] and names.entities("Rome") == ["Rome"]
    assert names.entities("Big Apple") == ["Big_Apple_(album)", "New_York_City"]  # a title then an alias
    assert names.entities("Narnia") == []
    for name in ("Paris", "City of Light", "Big Apple", "Rome", "Narnia"):
        assert len(names.entities(name)) == names.count(name)
