"""The HTML view of a link-job output (`jobs/link.py --html`): the pages' content, the CLI flag, and how Chrome shows them."""
import html
import importlib.util
import io
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onegen.pipeline.html_view import HTML_FOLDER, entity_url, write_html
from onegen.pipeline.outputs import MENTIONS_TYPE, Output, write_table

SPEC = importlib.util.spec_from_file_location("link_cli", Path(__file__).resolve().parents[1] / "jobs" / "link.py")
link_cli = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(link_cli)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("mentions", MENTIONS_TYPE),
                    ("status", pa.string()), ("error", pa.string())])
# non-ASCII (an astral emoji too) before the mentions, so byte or UTF-16 offsets would land wrong
TEXT = 'Zoë 🙂 saw Marie Curie, <b>&"Bob" and AT&T in Paris.'
CANDIDATES = [("Marie_Curie", 0.91), ("Pierre_Curie", 0.62), ("Curie_(unit)", 0.4), ("Curium", 0.3), ("Zoë", 0.2),
              ("Sixth_Candidate", 0.1)]


def mention(text: str, surface: str, entity_id: str | None, score: float, candidates=None) -> dict:
    start = text.index(surface)
    candidates = candidates or [(entity_id or "Bob_Dylan", score)]
    return {"start": start, "end": start + len(surface), "surface": surface, "entity_id": entity_id, "score": score,
            "candidates": [{"entity_id": e, "score": s} for e, s in candidates]}


DOCS = [
    {"doc_id": 'doc <1> & "one"', "text": TEXT, "status": "ok", "error": None, "mentions": [
        mention(TEXT, "Marie Curie", "Marie_Curie", 0.91, CANDIDATES),
        mention(TEXT, '<b>&"Bob"', None, 0.31),
        mention(TEXT, "AT&T", "AT&T", 0.8),
        mention(TEXT, "Paris", "Paris", 0.88)]},
    {"doc_id": "doc-2", "text": "Paris again.", "status": "ok", "error": None,
     "mentions": [mention("Paris again.", "Paris", "Paris", 0.9)]},
    {"doc_id": "bad", "text": None, "status": "error", "error": "text is empty <none>", "mentions": []},
]


@pytest.fixture
def finished(tmp_path) -> Path:
    """A finished output of two parts: two linked documents, then an error row."""
    output = Output.from_uri(str(tmp_path / "out"))
    write_table(output.filesystem, output.join("part-a.parquet"), pa.Table.from_pylist(DOCS[:2], SCHEMA))
    write_table(output.filesystem, output.join("part-b.parquet"), pa.Table.from_pylist(DOCS[2:], SCHEMA))
    return tmp_path / "out"


def text_div(page: str) -> str:
    return re.search(r'<div class="text">(.*?)</div>', page, re.S).group(1)


def mentions_of(page: str) -> list[tuple[str, str, str, str]]:
    """(tag, class, attributes, inner html) of each mention element of a document page's text."""
    return re.findall(r'<(a|mark) class="mention (linked|nil)"([^>]*)>(.*?)</\1>', text_div(page))


def test_document_page_highlights_each_mention_once_and_escapes_everything(finished):
    index = write_html(str(finished))
    assert index == f"{finished}/{HTML_FOLDER}/index.html"
    page = (finished / HTML_FOLDER / "docs" / "0.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<b>" not in page and "<1>" not in page and "<h1>doc &lt;1&gt; &amp; &quot;one&quot;</h1>" in page
    assert html.unescape(re.sub(r"<[^>]+>", "", text_div(page))) == TEXT  # the text, whole, in order
    found = mentions_of(page)
    assert [html.unescape(inner) for *_, inner in found] == ["Marie Curie", '<b>&"Bob"', "AT&T", "Paris"]
    assert [cls for _, cls, *_ in found] == ["linked", "nil", "linked", "linked"]
    curie, bob, att, _ = found
    assert 'href="https://en.wikipedia.org/wiki/Marie_Curie"' in curie[2]
    assert 'href="https://en.wikipedia.org/wiki/AT%26T"' in att[2] and 'data-label="AT&amp;T"' in att[2]
    assert entity_url("Curie_(unit)") == "https://en.wikipedia.org/wiki/Curie_%28unit%29"
    assert bob[0] == "mark" and 'data-label="NIL"' in bob[2] and "href" not in bob[2]
    assert bob[3] == "&lt;b&gt;&amp;&quot;Bob&quot;"
    title = html.unescape(re.search(r'title="([^"]*)"', curie[2]).group(1))
    assert title.splitlines() == ["Marie_Curie (score 0.910)", "top candidates:", "Marie_Curie 0.910",
                                  "Pierre_Curie 0.620", "Curie_(unit) 0.400", "Curium 0.300", "Zoë 0.200"]
    assert html.unescape(re.search(r'title="([^"]*)"', bob[2]).group(1)).startswith("NIL (score 0.310)\ntop candidates:\nBob_Dylan 0.310")
    error_page = (finished / HTML_FOLDER / "docs" / "2.html").read_text(encoding="utf-8")
    assert "error: text is empty &lt;none&gt;" in error_page and not mentions_of(error_page)


def test_index_sums_up_the_output_and_parquet_readers_skip_the_view(finished):
    write_html(str(finished))
    page = (finished / HTML_FOLDER / "index.html").read_text(encoding="utf-8")
    summary = dict(re.findall(r"<tr><th>(\w+)</th><td>([^<]*)</td></tr>", page))
    assert summary == {"documents": "3", "mentions": "5", "linked": "4 (80.0% of mentions)", "NIL": "1", "errors": "1"}
    entities = re.findall(r'<tr><td><a href="([^"]+)">([^<]+)</a></td><td>(\d+)</td></tr>', page)
    assert entities[0] == ("https://en.wikipedia.org/wiki/Paris", "Paris", "2") and len(entities) == 3
    assert '<a href="docs/2.html">bad</a>: <span class="error">text is empty &lt;none&gt;</span>' in page
    assert re.findall(r'<a href="(docs/\d+\.html)">', page).count("docs/0.html") == 1
    assert "left out" not in page
    assert pq.read_table(finished).num_rows == 3  # `_html/` is not read as data


def test_a_large_output_gets_pages_for_the_first_documents_only(finished):
    write_html(str(finished), max_documents=1)
    assert sorted(p.name for p in (finished / HTML_FOLDER / "docs").iterdir()) == ["0.html"]
    page = (finished / HTML_FOLDER / "index.html").read_text(encoding="utf-8")
    assert "2 documents left out: pages are written for the first 1 only." in page
    assert "<tr><th>documents</th><td>3</td></tr>" in page and "docs/1.html" not in page


def test_html_flag_writes_the_view_after_the_run_and_stays_out_of_the_job_config(finished, monkeypatch, capsys):
    assert not hasattr(link_cli.parse_args(["--input", "i.jsonl", "--output", "o", "--html"]), "html")
    summary = SimpleNamespace(output=str(finished), text=lambda: "3 documents")
    monkeypatch.setattr("onegen.pipeline.job.run_job", lambda config: summary)  # what main() runs
    link_cli.main(["--input", "i.jsonl", "--output", str(finished), "--html"])
    assert f"html: {finished}/{HTML_FOLDER}/index.html" in capsys.readouterr().out
    assert (finished / HTML_FOLDER / "index.html").is_file()
    shutil.rmtree(finished / HTML_FOLDER)
    link_cli.main(["--input", "i.jsonl", "--output", str(finished)])
    assert not (finished / HTML_FOLDER).exists()


# ---- in a real browser ---------------------------------------------------------------------------------

def rgb(css: str) -> tuple[int, int, int, float]:
    """`rgb(1, 2, 3)` or `rgba(1, 2, 3, 0.5)` -> (r, g, b, alpha)."""
    values = [float(v) for v in re.findall(r"[\d.]+", css)]
    return (*map(int, values[:3]), values[3] if len(values) > 3 else 1.0)


@pytest.fixture
def chrome(tmp_path):
    """Headless Chromium through chromedriver, with a fresh profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        reason = f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        if os.environ.get("ONEGEN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; ONEGEN_REQUIRE_BROWSER=1 makes its absence a failure")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.mark.slow
def test_chrome_shows_the_text_with_visible_highlights(finished, chrome, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    write_html(str(finished))
    chrome.get((finished / HTML_FOLDER / "docs" / "0.html").as_uri())
    assert TEXT in chrome.find_element(By.TAG_NAME, "body").text
    assert chrome.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
    screenshot = Image.open(io.BytesIO(chrome.get_screenshot_as_png())).convert("RGB")
    path = tmp_path / "document.png"
    screenshot.save(path)
    print(f"screenshot: {path}")
    ratio = chrome.execute_script("return window.devicePixelRatio")
    shown = {}  # class -> colour on the screenshot
    elements = chrome.find_elements(By.CSS_SELECTOR, ".text .mention")
    assert len(elements) == 4
    for element, expected in zip(elements, DOCS[0]["mentions"]):
        assert element.is_displayed()
        rect = chrome.execute_script("const r = arguments[0].getClientRects()[0]; return [r.left, r.top, r.width, r.height]",
                                     element)
        assert rect[2] > 0 and rect[3] > 0
        *background, alpha = rgb(element.value_of_css_property("background-color"))
        assert alpha > 0, f"{expected['surface']!r} has a transparent background"
        if expected["entity_id"] is not None:
            assert element.get_attribute("href") == entity_url(expected["entity_id"])
        # the highlight's colour fills most of the mention's box; the glyphs over it take the rest
        left, top, width, height = (round(v * ratio) for v in rect)
        box = screenshot.crop((left + 1, top + 1, left + width - 1, top + height - 1))
        _, colour = max(box.getcolors(box.width * box.height))  # (count, colour) of the most common
        centre = screenshot.getpixel((left + width // 2, top + 2))  # in the top padding, above the glyphs
        for seen in (colour, centre):
            assert max(abs(a - b) for a, b in zip(seen, background)) <= 8, (expected["surface"], seen, background)
        shown[element.get_attribute("class")] = colour
    assert shown["mention nil"] != shown["mention linked"]
