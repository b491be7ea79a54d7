"""onegen/silver.py: silver training documents from KB descriptions, and case variants."""
from kb.aliases import AliasTable
from kb.entity import Entity
from onegen.silver import case_variants, entity_name, link_names, silver_documents, unambiguous_names
from onegen.spans import Document, Mention

KB = [
    Entity("Aiea_High_School", "Aiea High School", "Aiea High School is a public high school of the Hawaii State "
           "Department of Education in Aiea, Hawaii, and it opened its doors in 1961."),
    Entity("Hawaii_State_Department_of_Education", "Hawaii State Department of Education", ""),
    Entity("Hawaii", "Hawaii", "Hawaii is a state of the United States, in the Pacific Ocean far from the mainland."),
    Entity("Paris", "Paris", ""),
    Entity("Paris_(mythology)", "Paris (mythology)", "Paris was a son of Priam and Hecuba in Greek mythology, "
           "a prince of Troy who took Helen to Troy and so began the war."),
    Entity("German_(parish)", "German (parish)", ""),
    Entity("School", "School", "A school is an institution for educating pupils under a teacher, and a school "
           "system is formed of school levels; most school pupils attend a school near home."),
    Entity("Russian", "Russian", ""),
    Entity("Friday", "Friday", ""),
    Entity("Short", "Short", "Too short to use."),
]


def test_names_are_titles_without_disambiguation():
    assert entity_name("Paris (mythology)") == "Paris" and entity_name("Hawaii") == "Hawaii"


def test_only_names_one_entity_has_plainly_and_no_alias_sends_elsewhere_are_linked():
    names = unambiguous_names(KB, AliasTable({"Russian": {"Russia": 5.0}}))
    assert names["Hawaii"] == "Hawaii" and names["Hawaii State Department of Education"].startswith("Hawaii_State")
    assert "Paris" not in names  # two entities are called Paris
    assert "German" not in names  # only a disambiguated title has it
    assert "School" not in names  # "school" is a word of the descriptions
    assert "Friday" not in names  # dates are not linked
    assert "Russian" not in names  # the alias table links it to Russia
    assert "Russian" in unambiguous_names(KB)


def test_the_longest_name_wins_and_the_described_entity_is_linked_wherever_it_occurs():
    text = "Paris met Hawaii State Department of Education officials in Hawaii; Paris left."
    found = link_names(text, unambiguous_names(KB), described=("Paris", "Paris_(mythology)"))
    assert [(m.surface, m.entity_id) for m in found] == [
        ("Paris", "Paris_(mythology)"), ("Hawaii State Department of Education", "Hawaii_State_Department_of_Education"),
        ("Hawaii", "Hawaii"), ("Paris", "Paris_(mythology)")]
    assert all(text[m.start:m.end] == m.surface for m in found)


def test_silver_documents_drop_descriptions_shared_with_evaluation_text_and_short_ones():
    docs, dropped = silver_documents(KB, exclude=["Breaking: Hawaii is a state of the United States, in the Pacific."])
    assert dropped == 1  # Hawaii's description shares eight words with the evaluation text
    assert [d.doc_id for d in docs] == ["silver:Aiea_High_School", "silver:Paris_(mythology)", "silver:School"]
    aiea = docs[0]
    assert [(m.surface, m.entity_id) for m in aiea.mentions] == [
        ("Aiea High School", "Aiea_High_School"),
        ("Hawaii State Department of Education", "Hawaii_State_Department_of_Education"), ("Hawaii", "Hawaii")]
    assert [m.entity_id for m in docs[1].mentions] == ["Paris_(mythology)"]  # its own name, though ambiguous


def test_case_variants_copy_a_share_of_documents_with_their_mentions():
    docs = [Document(f"d{i}", "Paris is in France.", [Mention(0, 5, "Paris", "Paris"), Mention(12, 18, "France", "France")])
            for i in range(200)] + [Document("strasse", "Die Straße in Paris.", [Mention(15, 20, "Paris", "Paris")])]
    variants = case_variants(docs, 0.25, seed=1)
    assert 30 < len(variants) < 70 and variants == case_variants(docs, 0.25, seed=1)
    upper = next(v for v in variants if v.doc_id.endswith("#upper"))
    lower = next(v for v in variants if v.doc_id.endswith("#lower"))
    assert upper.text == "PARIS IS IN FRANCE." and [m.surface for m in upper.mentions] == ["PARIS", "FRANCE"]
    assert lower.text == "paris is in france." and [m.entity_id for m in lower.mentions] == ["Paris", "France"]
    assert all(v.doc_id != "strasse#upper" for v in case_variants(docs, 1.0))  # "ß" -> "SS" would move the offsets
    assert case_variants(docs, 0.0) == []
