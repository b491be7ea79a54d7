"""bench/gpu_score.py: the settings are picked on the dev sets and --write-config makes them the model's linker_config.json."""
import importlib.util
from pathlib import Path

import pytest

from onegen.linker_config import LinkerConfig, model_config

SPEC = importlib.util.spec_from_file_location("gpu_score", Path(__file__).resolve().parents[1] / "bench" / "gpu_score.py")
gpu_score = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_score)


def test_write_config_saves_the_picked_settings_and_keeps_the_others(tmp_path):
    LinkerConfig(mention_bias=1.5, top_k=7).save(tmp_path)  # how the candidates were made
    LinkerConfig(mention_bias=1.5, top_k=7, given_nil_threshold=0.9).save(tmp_path / "given")
    gpu_score.write_config(tmp_path, gpu_score.RAW | {"nil_threshold": 0.6, "prior_weight": 0.3, "given_nil_threshold": 0.7,
                                                      "short_forms": True, "name_weight": 0.1})
    assert model_config(str(tmp_path)) == LinkerConfig(nil_threshold=0.6, alias_weight=0.3, popularity_weight=0.0,
                                                       mention_bias=1.5, top_k=7, given_nil_threshold=0.7, short_forms=True,
                                                       name_weight=0.1)
    gpu_score.write_config(tmp_path / "given", gpu_score.RAW | {"nil_threshold": 0.6})  # None: the NER's spans as the model's
    assert model_config(str(tmp_path / "given")).given_nil_threshold is None
    picked = gpu_score.RAW | {"nil_threshold": 0.6, "prior_weight": 0.3, "given_nil_threshold": 0.7, "short_forms": True,
                              "name_weight": 0.1, "popularity_weight": 0.2, "nil_prior_weight": 0.5}
    gpu_score.write_config(tmp_path / "again", picked)
    assert gpu_score.settings_of(model_config(str(tmp_path / "again"))) == picked  # what screen.py decides with


def test_the_settings_are_picked_by_the_mean_f1_over_the_dev_sets():
    """A threshold that suits one dev set alone loses to the one with the best mean over both."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "Paris Rome"

    def dev_set(*found: tuple[int, int, str, float]) -> tuple[list[Document], dict[str, list[Mention]]]:
        """One document whose gold link is Paris at (0, 5), and mentions retrieved with one candidate each."""
        gold = [Document("d", text, [Mention(0, 5, "Paris", "Paris")])]
        return gold, {"d": [Mention(s, e, text[s:e], candidates=[Candidate(entity, cosine)]) for s, e, entity, cosine in found]}

    weak_gold = dev_set((0, 5, "Paris", 0.42))  # alone: best with a NIL threshold under 0.42
    spurious = dev_set((0, 5, "Paris", 0.63), (6, 10, "Rome", 0.47))  # alone: best between 0.47 and 0.63

    def threshold(*dev):
        found = gpu_score.tune(list(dev), Redirects.empty(), AliasPrior(AliasTable({})), PopularityPrior({}))
        assert found["given_nil_threshold"] is None and not found["short_forms"]  # no NER spans, nothing to gain
        assert found["name_weight"] == 0.0  # every gold entity already ranked first
        return found["nil_threshold"], round(found["dev_f1"], 4)

    assert threshold(weak_gold) == (float("-inf"), 1.0)
    assert threshold(spurious) == (0.5, 1.0)
    assert threshold(weak_gold, spurious) == (float("-inf"), round((1 + 2 / 3) / 2, 4))  # 0.5 would give (0 + 1) / 2


def test_the_ner_spans_get_their_own_threshold_and_short_forms_are_linked_only_where_they_gain():
    """Teacher-forced NER spans whose cosines run higher than the model's own get a threshold of their own;
    a NIL surname of a linked full name is linked to it when that gains on the dev sets."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "Boris Yeltsin met Lebed . Yeltsin spoke ."
    spans = {"Boris Yeltsin": (0, 13), "Lebed": (18, 23), "Yeltsin": (26, 33)}
    gold = [Document("d", text, [Mention(*spans["Boris Yeltsin"], "Boris Yeltsin", "Boris_Yeltsin"),
                                 Mention(*spans["Yeltsin"], "Yeltsin", "Boris_Yeltsin")])]
    found = {"d": [Mention(*spans["Boris Yeltsin"], "Boris Yeltsin", candidates=[Candidate("Boris_Yeltsin", 0.6)], source="model"),
                   Mention(*spans["Lebed"], "Lebed", candidates=[Candidate("Alexander_Lebed", 0.7)], source="ner"),
                   Mention(*spans["Yeltsin"], "Yeltsin", candidates=[Candidate("Yeltsin_(film)", 0.5),
                                                                     Candidate("Boris_Yeltsin", 0.3)], source="model")]}
    chosen = gpu_score.tune([(gold, found)], Redirects.empty(), AliasPrior(AliasTable({})), PopularityPrior({}))
    assert chosen["dev_f1"] == 1.0 and chosen["short_forms"]
    # Yeltsin's best candidate (0.5) is NIL, Boris Yeltsin (0.6) is not, and Lebed (an NER span at 0.7) is NIL
    assert 0.5 < chosen["nil_threshold"] <= 0.6 and 0.7 < chosen["given_nil_threshold"]
    linked = gpu_score.link(found, chosen, AliasPrior(AliasTable({})), PopularityPrior({}))["d"]
    assert [(m.surface, m.entity_id, m.source) for m in linked] == [
        ("Boris Yeltsin", "Boris_Yeltsin", "model"), ("Lebed", None, "ner"), ("Yeltsin", "Boris_Yeltsin", "model")]
    assert linked[2].score == 0.3  # the cosine of the candidate it took


def test_a_name_weight_is_picked_where_the_entity_the_surface_names_is_ranked_second():
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    gold = [Document("d", "Paris", [Mention(0, 5, "Paris", "Paris_(band)")])]
    found = {"d": [Mention(0, 5, "Paris", candidates=[Candidate("Paris_Hilton", 0.72), Candidate("Paris_(band)", 0.70)],
                           source="model")]}
    chosen = gpu_score.tune([(gold, found)], Redirects.empty(), AliasPrior(AliasTable({})), PopularityPrior({}))
    assert chosen["dev_f1"] == 1.0 and chosen["name_weight"] >= 0.05  # 0.02 apart: the smallest weight above that
    assert gpu_score.link(found, gpu_score.RAW, AliasPrior(AliasTable({})), PopularityPrior({}))["d"][0].entity_id == "Paris_Hilton"


def test_the_alias_priors_nil_weight_is_picked_where_a_known_name_must_clear_nil_but_not_re_rank():
    """A weight high enough to lift the named mention over NIL re-ranks another one wrongly; the NIL weight, tuned
    apart from the ranking weight, links both right."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "Lutece Kornblum Rome Lyon"
    gold = [Document("d", text, [Mention(0, 6, "Lutece", "Paris"), Mention(7, 15, "Kornblum", "John_C._Kornblum"),
                                 Mention(21, 25, "Lyon", "Lyon")])]
    found = {"d": [Mention(0, 6, "Lutece", candidates=[Candidate("Paris", 0.9), Candidate("Lutece_(band)", 0.84)], source="model"),
                   Mention(7, 15, "Kornblum", candidates=[Candidate("John_C._Kornblum", 0.5)], source="model"),
                   Mention(16, 20, "Rome", candidates=[Candidate("Rome_(band)", 0.7)], source="model"),  # spurious
                   Mention(21, 25, "Lyon", candidates=[Candidate("Lyon_(band)", 0.80), Candidate("Lyon", 0.79)], source="model")]}
    table = AliasPrior(AliasTable({"Lutece": {"Lutece_(band)": 1}, "Kornblum": {"John_C._Kornblum": 1}, "Lyon": {"Lyon": 1}}))
    chosen = gpu_score.tune([(gold, found)], Redirects.empty(), table, PopularityPrior({}))
    # ranking: 0.05 lifts Lyon over Lyon_(band), 0.1 would lift Lutece_(band) over Paris; NIL: Kornblum (0.5) must
    # clear a threshold that Rome (0.7) does not, which needs a NIL weight above 0.2
    assert chosen["prior_weight"] == 0.05 and chosen["nil_prior_weight"] >= 0.3 and chosen["dev_f1"] == 1.0
    assert gpu_score.link(found, chosen | {"nil_prior_weight": None}, table, PopularityPrior({}))["d"][1].entity_id is None


def test_the_settings_suit_linking_with_the_alias_table_and_without_it():
    """The objective is the mean of the dev F1 with the alias table and without it (onegen-link's default): a
    threshold that only works because the table lifts a mention over it loses to one that suits both."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "PSG Rome Lyon"
    gold = [Document("d", text, [Mention(0, 3, "PSG", "Paris_Saint-Germain_F.C."), Mention(9, 13, "Lyon", "Lyon")])]
    found = {"d": [Mention(0, 3, "PSG", candidates=[Candidate("Paris_Hilton", 0.72), Candidate("Paris_Saint-Germain_F.C.", 0.70)],
                           source="model"),
                   Mention(4, 8, "Rome", candidates=[Candidate("Rome", 0.65)], source="model"),  # no gold link: spurious
                   Mention(9, 13, "Lyon", candidates=[Candidate("Lyon", 0.9)], source="model")]}
    table = AliasPrior(AliasTable({"psg": {"Paris_Saint-Germain_F.C.": 1}}))
    chosen = gpu_score.tune([(gold, found)], Redirects.empty(), table, PopularityPrior({}))
    # with the table alone, NIL 0.7 and weight 0.05 give 1.0, but without it PSG links Paris_Hilton there (0.5);
    # NIL 0.75 gives 1.0 with the table (PSG lifted to 0.75) and 2/3 without (Lyon alone)
    assert chosen["nil_threshold"] == 0.75 and chosen["prior_weight"] == 0.05 and chosen["dev_f1"] == 1.0
    assert round(chosen["dev_f1_without_aliases"], 4) == round(2 / 3, 4) and round(chosen["objective"], 4) == round(5 / 6, 4)


def test_without_the_alias_table_the_kbs_names_still_count():
    """"Without the table" is the KB's names alone, as in a linker given no table: a redirect's name lifts its
    entity both ways."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention
    from onegen.titles import Titles

    text = "PSG Rome Lyon"
    gold = [Document("d", text, [Mention(0, 3, "PSG", "Paris_Saint-Germain_F.C."), Mention(9, 13, "Lyon", "Lyon")])]
    found = {"d": [Mention(0, 3, "PSG", candidates=[Candidate("Paris_Hilton", 0.72), Candidate("Paris_Saint-Germain_F.C.", 0.70)],
                           source="model"),
                   Mention(4, 8, "Rome", candidates=[Candidate("Rome_(band)", 0.65)], source="model"),  # spurious
                   Mention(9, 13, "Lyon", candidates=[Candidate("Lyon", 0.9)], source="model")]}
    names = Titles.from_ids(["Paris_Saint-Germain_F.C.", "Paris_Hilton", "Rome_(band)", "Rome", "Lyon"],
                            [("PSG", "Paris_Saint-Germain_F.C.")])
    chosen = gpu_score.tune([(gold, found)], Redirects.empty(), AliasPrior(AliasTable({}), names=names), PopularityPrior({}))
    assert chosen["dev_f1"] == chosen["dev_f1_without_aliases"] == 1.0 and chosen["prior_weight"] > 0


def test_settings_given_are_scored_on_the_dev_sets_as_tune_scores_its_pick():
    """--settings MODEL_DIR: a model's own settings, scored with and without the alias table, no grid."""
    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "Lutece"  # a name only the alias table knows for Paris
    gold = [Document("d", text, [Mention(0, 6, "Lutece", "Paris")])]
    found = {"d": [Mention(0, 6, text, candidates=[Candidate("Paris", 0.5)])]}
    table = AliasPrior(AliasTable({"Lutece": {"Paris": 3}}))
    dev = [(gold, found)]
    with_prior = gpu_score.RAW | {"nil_threshold": 0.6, "prior_weight": 0.2}  # 0.5 + 0.2 with the table, 0.5 without
    assert gpu_score.dev_scores(with_prior, dev, Redirects.empty(), table, PopularityPrior({})) == {
        "dev_f1": 1.0, "dev_f1_without_aliases": 0.0, "objective": 0.5}
    no_prior = gpu_score.RAW | {"nil_threshold": 0.4}
    assert gpu_score.dev_scores(no_prior, dev, Redirects.empty(), table, PopularityPrior({}))["objective"] == 1.0
    picked = gpu_score.tune(dev, Redirects.empty(), table, PopularityPrior({}))
    assert gpu_score.dev_scores(picked, dev, Redirects.empty(), table, PopularityPrior({}))["objective"] == picked["objective"]


TEXT = "Paris met Lutece in Springfield."


def tiny_runs(tmp_path, runs: dict[str, dict]) -> tuple[Path, Path, list]:
    """A data folder with one NIF set "tiny" (gold: Paris, Lutece -> Paris, Springfield -> Illinois; and an empty
    document), its KB and alias table, and a folder of candidates-RUN.jsonl.gz files (doc id -> mentions per run)."""
    import json

    from eval.nif import to_nif
    from onegen.spans import Document, Mention

    gold = [Document("d1", TEXT, [Mention(0, 5, "Paris", "Paris"), Mention(10, 16, "Lutece", "Paris"),
                                  Mention(20, 31, "Springfield", "Springfield,_Illinois")]),
            Document("d2", "Nothing here.", [])]
    data = tmp_path / "data"
    (data / "gerbil").mkdir(parents=True)
    (data / "gerbil" / "tiny.ttl").write_text(to_nif(gold), encoding="utf-8")
    (data / "kb").mkdir()
    (data / "kb" / "redirects.tsv").write_text("", encoding="utf-8")
    (data / "kb" / "aida_train_aliases.tsv").write_text("Lutece\tParis\t3\n", encoding="utf-8")
    (data / "kb" / "entities.jsonl").write_text("".join(
        json.dumps({"id": i, "title": i.replace("_", " "), "popularity": p}) + "\n"
        for i, p in (("Paris", 100), ("Springfield,_Illinois", 5), ("Springfield,_Massachusetts", 50))), encoding="utf-8")
    folder = tmp_path / "runs"
    folder.mkdir()
    for run, found in runs.items():
        write_candidates(folder / f"candidates-{run}.jsonl.gz", "tiny", found)
    return data, folder, gold


def write_candidates(path: Path, dataset: str, found: dict) -> None:
    import gzip
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        for doc_id, mentions in found.items():
            f.write(json.dumps({"dataset": dataset, "doc_id": doc_id, "mentions": [m.to_dict() for m in mentions]}) + "\n")


def found_links(paris: float = 0.9, lutece: float = 0.55, illinois: float = 0.85) -> dict:
    """doc id -> retrieved mentions of TEXT, with these cosines for the gold entities."""
    from onegen.spans import Candidate, Mention

    return {"d1": [Mention(0, 5, "Paris", candidates=[Candidate("Paris", paris)]),
                   Mention(10, 16, "Lutece", candidates=[Candidate("Paris", lutece)]),
                   Mention(20, 31, "Springfield", candidates=[Candidate("Springfield,_Illinois", illinois),
                                                              Candidate("Springfield,_Massachusetts", 0.84)])],
            "d2": [Mention(0, 7, "Nothing", candidates=[Candidate("Paris", 0.3)])]}


def test_predictions_are_the_links_the_table_scores(tmp_path):
    """--predictions DIR: each dataset's decided links as DIR/NAME.ttl, which `onegen-gerbil score` scores as the
    table does (and `compare` compares)."""
    import json

    from eval.predictions import read_predictions
    from eval.scorer import score

    data, runs, gold = tiny_runs(tmp_path, {"main": found_links()})
    LinkerConfig(nil_threshold=0.6, alias_weight=0.1, popularity_weight=0.1).save(tmp_path / "model")
    LinkerConfig(nil_threshold=0.6, alias_weight=0.0, popularity_weight=0.0).save(tmp_path / "plain")  # no priors
    gpu_score.main(["--candidates", str(runs), "--data-dir", str(data), "--tune-sets", "tiny", "--settings",
                    str(tmp_path / "model"), "--json", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "links"),
                    "--against", str(tmp_path / "plain")])
    links = read_predictions(tmp_path / "links" / "tiny.ttl")
    # Paris; Lutece by the alias table (0.55 + 0.1); Springfield, Massachusetts by popularity; "Nothing" NIL
    assert [(m.surface, m.entity_id) for m in links["d1"]] == [
        ("Paris", "Paris"), ("Lutece", "Paris"), ("Springfield", "Springfield,_Massachusetts")]
    assert [(m.surface, m.entity_id) for m in links["d2"]] == [("Nothing", None)]  # NIL, written as NIL
    report = json.loads((tmp_path / "r.json").read_text())
    table = report["datasets"]["tiny"]
    assert score(gold, links).to_dict() == table and table["inkb"]["micro"]["tp"] == 2
    # --against, no priors (A): Lutece NIL (0.55), Springfield takes Illinois (gold): TP 2, FN 1 -> F1 0.8, with the
    # table or without; the model's settings (B): TP 2, FP 1, FN 1 with the table, and without it Lutece is NIL too
    against = {(c["dataset"], c["alias_prior"]): c for c in report["against"]}
    assert set(against) == {("tiny", "table"), ("tiny", "names only")}
    assert [against["tiny", "table"][k] for k in ("f1_a", "f1_b", "documents")] == pytest.approx([0.8, 2 / 3, 2])
    assert [against["tiny", "names only"][k] for k in ("f1_b", "difference")] == pytest.approx([0.4, -0.4])
    assert 0 <= against["tiny", "names only"]["p_value"] <= 1
    # the model's settings lose on the dev objective: they may not replace the plain ones
    assert not report["verdict"]["ships"] and "the dev objective does not rise" in report["verdict"]["reasons"][0]


def test_against_run_compares_two_runs_each_decided_under_its_settings(tmp_path, capsys):
    """--against-run RUN: the run that should replace RUN (a new model's candidates against the old one's, decoded in
    the same call) is compared with it on each dev set, and the shipping rule's verdict is printed."""
    import json

    # the old model ranks Springfield, Massachusetts first and finds Lutece less like Paris
    data, runs, _ = tiny_runs(tmp_path, {"main": found_links(), "baseline": found_links(lutece=0.4, illinois=0.8)})
    LinkerConfig(nil_threshold=0.5, alias_weight=0.0, popularity_weight=0.0).save(tmp_path / "plain")
    gpu_score.main(["--candidates", str(runs), "--data-dir", str(data), "--tune-sets", "tiny", "--settings",
                    str(tmp_path / "plain"), "--json", str(tmp_path / "r.json"), "--against-run", "baseline"])
    report = json.loads((tmp_path / "r.json").read_text())
    against = {(c["dataset"], c["alias_prior"]): c for c in report["against"]}
    # baseline (A): Paris right, Lutece NIL (0.4), Springfield wrong: TP 1, FP 1, FN 2 -> 0.4; main (B): all three right
    assert [against["tiny", "table"][k] for k in ("f1_a", "f1_b")] == pytest.approx([0.4, 1.0])
    assert report["runs"]["baseline"]["objective"] == pytest.approx(0.4)
    # one document cannot show a gain beyond chance, so the rule keeps the old model
    assert report["verdict"] == {"ships": False, "reasons": [
        "tiny is higher beyond chance in no way of scoring it (table +60.00, p 1.0000, names only +60.00, p 1.0000)"]}
    assert "B may not replace A" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no candidates-old.jsonl.gz"):
        gpu_score.main(["--candidates", str(runs), "--data-dir", str(data), "--tune-sets", "tiny", "--against-run", "old"])


def test_choices_reused_across_the_grid_decide_as_a_fresh_decision_does():
    """DevSets ranks each mention once per prior setting (RANKING_SETTINGS) and reuses that across thresholds and
    short forms: every setting of a grid that varies them all scores as deciding from scratch does."""
    import itertools

    from kb.aliases import AliasTable
    from kb.ids import Redirects
    from onegen.decide import AliasPrior, PopularityPrior
    from onegen.spans import Candidate, Document, Mention

    text = "Lutece Kornblum Rome Lyon, Paris Kornblum"
    gold = [Document("d", text, [Mention(0, 6, "Lutece", "Paris"), Mention(7, 15, "Kornblum", "John_C._Kornblum"),
                                 Mention(21, 25, "Lyon", "Lyon"), Mention(27, 32, "Paris", "Paris"),
                                 Mention(33, 41, "Kornblum", "John_C._Kornblum")])]
    found = {"d": [Mention(0, 6, "Lutece", candidates=[Candidate("Paris", 0.9), Candidate("Lutece_(band)", 0.84)], source="model"),
                   Mention(7, 15, "Kornblum", candidates=[Candidate("John_C._Kornblum", 0.5)], source="ner"),
                   Mention(16, 20, "Rome", candidates=[Candidate("Rome_(band)", 0.7)], source="model"),
                   Mention(21, 25, "Lyon", candidates=[Candidate("Lyon_(band)", 0.80), Candidate("Lyon", 0.79)], source="model"),
                   Mention(27, 32, "Paris", candidates=[Candidate("Paris_(band)", 0.81), Candidate("Paris", 0.8)], source="model"),
                   Mention(33, 41, "Kornblum", candidates=[Candidate("John_C._Kornblum", 0.4)], source="model")]}
    table = AliasPrior(AliasTable({"Lutece": {"Lutece_(band)": 1}, "Kornblum": {"John_C._Kornblum": 1}, "Lyon": {"Lyon": 1}}))
    popularity = PopularityPrior({"Paris": 1.0, "Lyon_(band)": 0.3})
    dev = [(gold, found)]
    reused = gpu_score.DevSets(dev, Redirects.empty(), table, popularity)
    seen = set()
    for weight, nil_weight, popularity_weight, name_weight, threshold, given, short in itertools.product(
            (0.0, 0.1, 0.5), (None, 0.0, 0.5), (0.0, 0.3), (0.0, 0.1), (0.5, 0.75, 0.85), (None, 0.45), (False, True)):
        settings = gpu_score.RAW | {"prior_weight": weight, "nil_prior_weight": nil_weight, "popularity_weight": popularity_weight,
                                    "name_weight": name_weight, "nil_threshold": threshold, "given_nil_threshold": given,
                                    "short_forms": short}
        fresh = gpu_score.DevSets(dev, Redirects.empty(), table, popularity).scores(settings)
        assert reused.scores(settings) == fresh, settings
        seen.add(fresh["dev_f1"])
    assert len(seen) >= 4  # the grid moves the score, so a choice reused under the wrong setting would show
