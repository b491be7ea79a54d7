"""The command line `python eval/run_gerbil.py score|compare|run|serve`, end to end."""
import gzip
import json
import select
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.nif import parse_nif, to_nif
from eval.run_gerbil import main
from eval.scorer import score
from onegen.spans import Document, Mention
from onegen.linker import Linker, decide_mentions
from onegen.linker_config import LinkerConfig
from test_linker import FakeOneGen, kb_search

REPO = Path(__file__).resolve().parent.parent
SCRIPT = [sys.executable, str(REPO / "eval" / "run_gerbil.py")]

TEXT1 = "German chancellor Helmut Kohl met Bill Clinton in Brussels on Monday."
TEXT2 = "Angela Merkel visited Paris and London last week."
TEXT3 = "Nothing to see."
D1, D2, D3 = (f"http://example.org/{n}#char=0,{len(t)}" for n, t in (("d1", TEXT1), ("d2", TEXT2), ("d3", TEXT3)))
GOLD = [
    Document(D1, TEXT1, [Mention(0, 6, "German", "Germany"), Mention(18, 29, "Helmut Kohl", "Helmut_Kohl"),
                         Mention(34, 46, "Bill Clinton", "Bill_Clinton"), Mention(50, 58, "Brussels", None)]),
    Document(D2, TEXT2, [Mention(0, 13, "Angela Merkel", "Angela_Merkel"), Mention(22, 27, "Paris", "Paris")]),
    Document(D3, TEXT3, []),
]
MENTION = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("surface", pa.string()), ("entity_id", pa.string()),
                     ("score", pa.float32()), ("candidates", pa.list_(pa.string()))])
SCHEMA = pa.schema([("doc_id", pa.string()), ("mentions", pa.list_(MENTION)), ("status", pa.string()),
                    ("error", pa.string())])


def m(start, end, surface, entity_id):
    return {"start": start, "end": end, "surface": surface, "entity_id": entity_id, "score": 1.0, "candidates": []}


# d1: German right; Helmut Kohl wrong entity; Bill Clinton one char short; Brussels right NIL; Monday spurious NIL.
# d2: the link job failed on it (status=error) -> both gold links missed. d3: nothing, rightly.
PRED_ROWS = [
    {"doc_id": D1, "status": "ok", "error": None,
     "mentions": [m(0, 6, "German", "Germany"), m(18, 29, "Helmut Kohl", "Helmut_Schmidt"),
                  m(34, 45, "Bill Clinto", "Bill_Clinton"), m(50, 58, "Brussels", None), m(62, 68, "Monday", None)]},
    {"doc_id": D2, "status": "error", "error": "CUDA out of memory", "mentions": []},
    {"doc_id": D3, "status": "ok", "error": None, "mentions": []},
]


@pytest.fixture
def files(tmp_path):
    gold, pred = tmp_path / "gold.ttl", tmp_path / "pred.parquet"
    gold.write_text(to_nif(GOLD), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(PRED_ROWS, schema=SCHEMA), pred)
    return gold, pred


def micro(report: dict, cls: str) -> tuple:
    s = report[cls]["micro"]
    return s["tp"], s["fp"], s["fn"], s["precision"], s["recall"], s["f1"]


def test_score_strong(files, tmp_path, capsys):
    gold, pred = files
    assert main(["score", "--gold", str(gold), "--pred", str(pred), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    # InKB: TP German; FP Helmut_Schmidt, short Bill Clinton; FN Helmut Kohl, Bill Clinton, Angela Merkel, Paris
    assert micro(report, "inkb") == pytest.approx((1, 2, 4, 1 / 3, 1 / 5, 0.25))
    # per document InKB F1: d1 1/3, d2 0, d3 (nothing either side) 1
    assert report["inkb"]["macro"] == pytest.approx({"precision": 4 / 9, "recall": 4 / 9, "f1": 4 / 9})
    # EE: TP Brussels, FP Monday; EE macro F1: d1 2/3, d2 and d3 1 (no NIL either side)
    assert micro(report, "ee") == pytest.approx((1, 1, 0, 0.5, 1.0, 2 / 3))
    assert report["ee"]["macro"]["f1"] == pytest.approx(8 / 9)
    assert report["documents"] == 3 and report["prediction_errors"] == 1
    out = capsys.readouterr().out
    assert "3 documents, 1 with status=error" in out
    lines = out.splitlines()
    assert lines.index(next(l for l in lines if l.startswith("InKB"))) < lines.index(next(l for l in lines if l.startswith("EE")))


def test_score_weak_match_and_redirects(files, tmp_path):
    gold, pred = files
    redirects = tmp_path / "redirects.tsv"
    redirects.write_text("Helmut_Schmidt\tHelmut_Kohl\n", encoding="utf-8")
    main(["score", "--gold", str(gold), "--pred", str(pred), "--match", "weak", "--json", str(tmp_path / "w.json")])
    # weak: the short Bill Clinton span overlaps the gold one -> TP 2, FP 1, FN 3
    assert micro(json.loads((tmp_path / "w.json").read_text()), "inkb") == pytest.approx((2, 1, 3, 2 / 3, 2 / 5, 0.5))
    main(["score", "--gold", str(gold), "--pred", str(pred), "--redirects", str(redirects), "--json", str(tmp_path / "x.json")])
    # the redirect makes the Helmut_Schmidt prediction right -> TP 2, FP 1, FN 3
    assert micro(json.loads((tmp_path / "x.json").read_text()), "inkb") == pytest.approx((2, 1, 3, 2 / 3, 2 / 5, 0.5))


def test_score_aida_gold_with_split(tmp_path):
    aida = tmp_path / "aida.tsv"
    aida.write_text("-DOCSTART- (1 EU)\nGerman\tB\tGerman\tGermany\thttp://en.wikipedia.org/wiki/Germany\t1\t/m/1\ncall\n\n"
                    "-DOCSTART- (947testa X)\nLeeds\tB\tLeeds\tLeeds\thttp://en.wikipedia.org/wiki/Leeds\t2\t/m/2\n\n",
                    encoding="utf-8")
    rows = [{"doc_id": "947testa X", "status": "ok", "error": None, "mentions": [m(0, 5, "Leeds", "Leeds")]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "p.parquet")
    main(["score", "--gold", str(aida), "--split", "testa", "--pred", str(tmp_path / "p.parquet"), "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["documents"] == 1 and micro(report, "inkb")[:3] == (1, 0, 0)


def test_compare_two_systems(files, tmp_path, capsys):
    gold, worse = files
    better_rows = [dict(row, status="ok", error=None) for row in PRED_ROWS]  # the failed document linked right
    better_rows[1]["mentions"] = [m(0, 13, "Angela Merkel", "Angela_Merkel"), m(22, 27, "Paris", "Paris")]
    better = tmp_path / "better.parquet"
    pq.write_table(pa.Table.from_pylist(better_rows, schema=SCHEMA), better)
    args = ["compare", "--gold", str(gold), "--pred", str(worse), "--pred", str(better), "--resamples", "999"]
    assert main([*args, "--json", str(tmp_path / "c.json")]) == 0
    [result] = json.loads((tmp_path / "c.json").read_text())["datasets"]
    # A: InKB TP 1, FP 2, FN 4 (test_score_strong); B: TP 3, FP 2, FN 2 -> F1 6/10
    assert (result["f1_a"], result["f1_b"], result["difference"]) == pytest.approx((0.25, 0.6, 0.35))
    low, high = result["difference_interval"]
    assert low <= 0.35 <= high and 0 <= result["p_value"] <= 1 and result["documents"] == 3
    captured = capsys.readouterr()
    assert "1 document(s) with status=error" in captured.err  # system A's failed document, said
    [row] = [line.split() for line in captured.out.splitlines() if line.startswith("gold ")]
    assert row[:3] == ["gold", "3", "25.00"] and row[6] == "60.00" and row[10] == "+35.00"
    assert main([*args, "--json", str(tmp_path / "again.json")]) == 0  # seeded: the same intervals again
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((tmp_path / "c.json").read_text())


def test_compare_named_datasets_from_the_folders_run_writes(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "gerbil").mkdir(parents=True)
    (data / "kb").mkdir()
    (data / "kb" / "redirects.tsv").write_text("Helmut_Schmidt\tHelmut_Kohl\n", encoding="utf-8")
    for name in ("one", "two"):
        (data / "gerbil" / f"{name}.ttl").write_text(to_nif(GOLD), encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, entity in ((a, "Helmut_Schmidt"), (b, "Angela_Merkel")):
        linked = [Document(D1, TEXT1, [Mention(18, 29, "Helmut Kohl", entity)]), Document(D2, TEXT2, [])]
        folder.mkdir()
        for name in ("one", "two"):
            (folder / f"{name}.ttl").write_text(to_nif(linked), encoding="utf-8")
    assert main(["compare", "--datasets", "one,two", "--data-dir", str(data), "--pred", str(a), "--pred", str(b),
                 "--resamples", "99", "--json", str(tmp_path / "c.json")]) == 0
    report = json.loads((tmp_path / "c.json").read_text())
    # the data dir's redirects count by default: A's Helmut_Schmidt is Helmut_Kohl, right; B's Angela_Merkel wrong
    assert report["redirects"] == str(data / "kb" / "redirects.tsv")
    assert [(r["dataset"], r["f1_a"] > 0, r["f1_b"]) for r in report["datasets"]] == [("one", True, 0), ("two", True, 0)]
    (b / "two.ttl").unlink()
    capsys.readouterr()
    assert main(["compare", "--datasets", "one,two", "--data-dir", str(data), "--pred", str(a), "--pred", str(b)]) == 2
    captured = capsys.readouterr()  # said before any work, in one line
    assert captured.err == f"error: predictions not found: {b / 'two.ttl'}\n" and captured.out == ""


def kb_files(folder: Path) -> list[str]:
    """Options pointing the baseline at a tiny alias table and KB (nothing from the data bundle)."""
    (folder / "aliases.tsv").write_text("German\tGermany\t3\nHelmut Kohl\tHelmut_Kohl\t2\nParis\tParis\t1\n", encoding="utf-8")
    (folder / "entities.jsonl").write_text("".join(json.dumps({"id": i, "title": i.replace("_", " "), "popularity": 1}) + "\n"
                                                   for i in ("Brussels", "London", "Germany", "Paris")), encoding="utf-8")
    return ["--aliases", str(folder / "aliases.tsv"), "--kb", str(folder / "entities.jsonl")]


def test_run_baseline_on_a_dataset_file(tmp_path, capsys):
    gold = [
        Document(D1, TEXT1, [Mention(0, 6, "German", "Germany"), Mention(18, 29, "Helmut Kohl", "Helmut_Kohl"),
                             Mention(34, 46, "Bill Clinton", "Bill_Clinton"), Mention(50, 58, "Brussels", "Brussels")]),
        Document(D2, TEXT2, [Mention(0, 13, "Angela Merkel", "Angela_Merkel"), Mention(22, 27, "Paris", "Paris"),
                             Mention(32, 38, "London", "London")]),
    ]
    (tmp_path / "tiny.ttl").write_text(to_nif(gold), encoding="utf-8")
    code = main(["run", "--data-dir", str(tmp_path), "--dataset-file", str(tmp_path / "tiny.ttl"), "--linker", "baseline",
                 "--json", str(tmp_path / "run.json"), "--predictions", str(tmp_path / "links"), *kb_files(tmp_path)])
    assert code == 0
    # baseline: German, Helmut Kohl (aliases), Brussels, London (KB titles), Paris (alias) right;
    # Bill Clinton and Angela Merkel found but NIL -> InKB TP 5, FP 0, FN 2
    # micro P 100, R 5/7 = 71.43, F1 10/12 = 83.33; macro F1 = mean(6/7, 4/5) = 82.86
    captured = capsys.readouterr()
    row = next(l for l in captured.out.splitlines() if l.startswith("tiny"))
    assert row.split() == ["tiny", "2", "7", "100.00", "71.43", "83.33", "82.86", row.split()[-1]]
    assert "tiny: 100%" in captured.err and "2/2" in captured.err  # progress reaches a log too, not only a terminal
    result = json.loads((tmp_path / "run.json").read_text())
    [dataset] = result["datasets"]
    assert dataset["dataset"] == "tiny" and dataset["docs"] == 2 and dataset["gold_inkb"] == 7
    assert micro(dataset["report"], "inkb")[:3] == (5, 0, 2)
    assert dataset["docs_per_second"] > 0 and result["redirects"] is None  # no kb/redirects.tsv in this data dir
    # the links, written as NIF, score as the run scored them
    assert main(["score", "--gold", str(tmp_path / "tiny.ttl"), "--pred", str(tmp_path / "links" / "tiny.ttl"),
                 "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["inkb"] == dataset["report"]["inkb"]


@pytest.mark.slow
def test_run_baseline_on_msnbc(shared_data, tmp_path):
    proc = subprocess.run([*SCRIPT, "run", "--datasets", "msnbc", "--linker", "baseline", "--json", str(tmp_path / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = next(l for l in proc.stdout.splitlines() if l.startswith("msnbc"))
    assert row.split()[1:3] == ["20", "656"]  # docs and gold InKB links as the bundle README counts them
    [dataset] = json.loads((tmp_path / "r.json").read_text())["datasets"]
    assert 0 < dataset["report"]["inkb"]["micro"]["f1"] < 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["score", "--gold", "missing.ttl", "--pred", "missing.parquet"], "dataset file not found: missing.ttl"),
    (["run", "--datasets", "aida-testb,nope", "--linker", "baseline"], "unknown dataset(s) nope"),
    (["run", "--dataset-file", "missing.ttl", "--linker", "baseline"], "dataset file not found"),
    (["serve", "--linker", "gpt"], "unknown linker 'gpt'; choose one of: baseline, onegen"),
    (["compare", "--gold", "../shared/data/gerbil/msnbc.ttl", "--pred", "a.ttl"], "compare needs --pred twice"),
    (["compare", "--pred", "a", "--pred", "b"], "compare needs either --gold FILE"),
    (["compare", "--datasets", "msnbc,nope", "--pred", "a", "--pred", "b"], "unknown dataset(s) nope"),
])
def test_user_errors_exit_2_with_one_line(args, message, shared_data):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_help_runs_as_script_and_module():
    proc = run_cli("--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("score", "compare", "run", "serve"))
    for command in ("score", "compare", "run", "serve"):
        proc = subprocess.run([sys.executable, "-m", "eval.run_gerbil", command, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and f"python eval/run_gerbil.py {command}" in proc.stdout  # the example


def test_serve_answers_a_post(tmp_path):
    proc = subprocess.Popen([*SCRIPT, "serve", "--port", "0", "--linker", "baseline", *kb_files(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert "listening on http://" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split("listening on ", 1)[1].split()[0]
        request = to_nif([Document(D2, TEXT2, [])]).encode("utf-8")
        with urllib.request.urlopen(urllib.request.Request(
                url, data=request, headers={"Content-Type": "application/x-turtle"}), timeout=60) as answer:
            [doc] = parse_nif(answer.read())
        assert doc.mentions == [Mention(0, 13, "Angela Merkel", None), Mention(22, 27, "Paris", "Paris"),
                                   Mention(32, 38, "London", "London")]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def candidate_linker(nil_threshold: float) -> Linker:
    """onegen.Linker's retrieval and decision over the test fakes: capitalised words as mentions, a hashed-vector KB."""
    return Linker(FakeOneGen(), kb_search(["Germany", "Paris", "London"]), LinkerConfig(nil_threshold=nil_threshold, top_k=3))


def test_run_writes_the_candidates_the_links_were_decided_from(tmp_path, monkeypatch):
    (tmp_path / "tiny.ttl").write_text(to_nif(GOLD), encoding="utf-8")
    monkeypatch.setattr("eval.run_gerbil.get_linker", lambda name, **options: candidate_linker(nil_threshold=0.5))
    path = tmp_path / "cpu" / "candidates-main.jsonl.gz"
    assert main(["run", "--data-dir", str(tmp_path), "--dataset-file", str(tmp_path / "tiny.ttl"), "--linker", "onegen",
                 "--json", str(tmp_path / "run.json"), "--candidates", str(path)]) == 0
    assert [p.name for p in path.parent.iterdir()] == ["candidates-main.jsonl.gz"]  # no partial file left
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert {r["dataset"] for r in rows} == {"tiny"}
    docs = {r["doc_id"]: r["mentions"] for r in rows}
    assert sorted(docs) == sorted([D1, D2, D3])
    assert [m["surface"] for m in docs[D1]] == ["German", "Helmut", "Kohl", "Bill", "Clinton", "Brussels", "Monday"]
    paris = docs[D2][2]
    assert (paris["start"], paris["end"], paris["surface"]) == (22, 27, "Paris") and len(paris["candidates"]) == 3
    assert paris["candidates"][0] == ["Paris", pytest.approx(1.0)]

    def offline(threshold):  # decided from the file, as bench/gpu_score.py decides
        linked = {doc_id: decide_mentions([Mention.from_dict(m) for m in mentions], nil_threshold=threshold)
                  for doc_id, mentions in docs.items()}
        return score(GOLD, linked).inkb.micro

    [dataset] = json.loads((tmp_path / "run.json").read_text())["datasets"]
    assert micro(dataset["report"], "inkb")[:3] == (offline(0.5).tp, offline(0.5).fp, offline(0.5).fn)
    assert offline(0.5).tp == 1  # Paris
    recorded = [m["entity_id"] for mentions in docs.values() for m in mentions]  # eval/mention_errors.py reads them
    decided = [m.entity_id for mentions in docs.values()
               for m in decide_mentions([Mention.from_dict(m) for m in mentions], nil_threshold=0.5)]
    assert recorded == decided and None in recorded and "Paris" in recorded
    # with no NIL all 12 mentions are linked: Paris right; London (not a gold mention), Nothing (d3) and the rest wrong
    assert (offline(-1.0).tp, offline(-1.0).fp) == (1, 11)


@pytest.mark.parametrize("command", ["run", "serve"])
def test_the_onegen_linker_counts_the_data_dirs_redirects_in_its_alias_prior(command, tmp_path):
    from eval.run_gerbil import build_parser, linker_from_args, resolve_linker_paths

    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "redirects.tsv").write_text("Big_Apple\tNew_York_City\n")
    asked = {}

    def options_of(linker: str, *flags: str) -> dict:
        args = build_parser().parse_args([command, "--data-dir", str(tmp_path), "--linker", linker, *flags])
        resolve_linker_paths(args)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("eval.run_gerbil.get_linker", lambda name, **options: asked.update(options))
            linker_from_args(args)
        return dict(asked)

    assert options_of("onegen")["redirects"] == str(tmp_path / "kb" / "redirects.tsv")
    assert options_of("onegen", "--redirects", "mine.tsv")["redirects"] == "mine.tsv"
    asked.clear()
    assert "redirects" not in options_of("baseline")  # the baseline takes no such option


@pytest.mark.parametrize("args, message", [
    (["--linker", "baseline", "--candidates", "c/candidates-main.jsonl.gz"], "--candidates needs the onegen linker"),
    (["--linker", "onegen", "--candidates", "c/candidates.json"], "name it DIR/candidates-RUN.jsonl.gz"),
])
def test_run_refuses_candidates_it_cannot_write_before_loading_a_model(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.ttl").write_text(to_nif(GOLD), encoding="utf-8")
    monkeypatch.setattr("eval.run_gerbil.get_linker", lambda name, **options: pytest.fail("the linker was built"))
    assert main(["run", "--data-dir", str(tmp_path), "--dataset-file", str(tmp_path / "tiny.ttl"), *args]) == 2
    assert message in capsys.readouterr().err
