"""Readers for the real KB sources: a Wikipedia pages-articles XML dump and a Wikidata JSON dump."""
import bz2
import gzip
import json

import pytest

from kb.entity import Entity
from kb.jsonl import read_kb
from kb.wikidata import convert_wikidata, iter_wikidata
from kb.wikipedia import Redirect, WikipediaReport, convert_wikipedia, iter_wikipedia

NS = "http://www.mediawiki.org/xml/export-0.11/"


def page(title, ns, page_id, text, redirect=None):
    redirect_tag = f'<redirect title="{redirect}" />' if redirect else ""
    return f"""  <page>
    <title>{title}</title>
    <ns>{ns}</ns>
    <id>{page_id}</id>
    {redirect_tag}
    <revision>
      <id>{page_id}000</id>
      <parentid>1</parentid>
      <timestamp>2024-01-01T00:00:00Z</timestamp>
      <contributor><username>Editor</username><id>77</id></contributor>
      <model>wikitext</model>
      <format>text/x-wiki</format>
      <text bytes="{len(text)}" xml:space="preserve">{text}</text>
      <sha1>abc</sha1>
    </revision>
  </page>
"""


LONDON = """{{Short description|Capital of England}}
{{Infobox settlement|name=London|population=9,000,000}}
[[File:London Skyline.jpg|thumb|The [[River Thames]] at night]]
'''London''' ({{IPA|ˈlʌndən}}) is the [[capital city|capital]] of [[England]] and the [[United Kingdom]].&lt;ref name="a"&gt;{{cite web|url=http://x}}&lt;/ref&gt; It stands on the [[River Thames]] &amp;amp; has ''many'' parks.&lt;!-- hidden --&gt;

London was founded by the Romans.

== History ==
Roman times.
[[Category:Capitals in Europe]]
[[fr:Londres]]"""

MERCURY = "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n{{disambiguation}}"
SPRINGFIELD = "'''Springfield''' is a common name.\n{{Set index article}}"

DUMP = f"""<mediawiki xmlns="{NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
    </namespaces>
  </siteinfo>
{page("London", 0, 1, LONDON)}
{page("UK", 0, 2, "#REDIRECT [[United Kingdom]]", redirect="United Kingdom")}
{page("Mercury", 0, 3, MERCURY)}
{page("Talk:London", 1, 4, "Discussion.")}
{page("Springfield", 0, 5, SPRINGFIELD)}
{page("Gare du Nord", 0, 6, "The '''Gare du Nord''' is a station in [[Paris]].")}
{page("Old name", 0, 7, "#REDIRECT [[Gare du Nord#History]]", redirect="Gare du Nord#History")}
{page("Empty stub", 0, 8, "{{Infobox person}}")}
</mediawiki>
"""


@pytest.mark.parametrize("compress", [False, True])
def test_wikipedia_dump_to_kb_and_redirects(tmp_path, compress):
    data = DUMP.encode()
    dump = tmp_path / ("dump.xml.bz2" if compress else "dump.xml")
    dump.write_bytes(bz2.compress(data) if compress else data)
    report = convert_wikipedia(dump, tmp_path / "kb.jsonl", tmp_path / "redirects.tsv", progress=False)
    entities = read_kb(tmp_path / "kb.jsonl").entities
    assert [e.id for e in entities] == ["London", "Gare_du_Nord", "Empty_stub"]
    london = entities[0]
    assert london.title == "London"
    assert london.description == (
        "London is the capital of England and the United Kingdom. It stands on the River Thames & has many parks."
    )
    assert entities[1] == Entity("Gare_du_Nord", "Gare du Nord", "The Gare du Nord is a station in Paris.")
    assert entities[2].description == ""  # allowed: the title is used
    assert (tmp_path / "redirects.tsv").read_text() == "UK\tUnited_Kingdom\nOld_name\tGare_du_Nord\n"
    assert (report.pages, report.articles, report.redirects, report.disambiguation, report.other_namespaces) == (8, 3, 2, 2, 1)


def test_wikipedia_stream_keeps_memory_flat(tmp_path):
    pages = "".join(page(f"Page {i}", 0, i, f"'''Page {i}''' is page [[number {i}]].") for i in range(2000))
    dump = tmp_path / "big.xml"
    dump.write_text(DUMP.replace("</mediawiki>", pages + "</mediawiki>"))
    import tracemalloc

    tracemalloc.start()
    report = WikipediaReport()
    count = sum(1 for item in iter_wikipedia(dump, report, progress=False) if not isinstance(item, Redirect))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 2003 and report.articles == 2003
    assert peak < dump.stat().st_size  # the parsed tree is cleared page by page


WIKIDATA_ITEMS = [
    {
        "type": "item", "id": "Q84",
        "labels": {"en": {"language": "en", "value": "London"}, "fr": {"language": "fr", "value": "Londres"}},
        "descriptions": {"en": {"language": "en", "value": "capital and largest city of the United Kingdom"}},
        "aliases": {"en": [{"language": "en", "value": "London, UK"}, {"language": "en", "value": "Londinium"}]},
        "claims": {},
        "sitelinks": {"enwiki": {"site": "enwiki", "title": "London", "badges": []},
                      "frwiki": {"site": "frwiki", "title": "Londres", "badges": []}},
    },
    {"type": "item", "id": "Q1", "labels": {"en": {"language": "en", "value": "no enwiki"}}, "sitelinks": {}},
    {
        "type": "item", "id": "Q90",
        "labels": {"en": {"language": "en", "value": "Paris"}},
        "descriptions": {},
        "sitelinks": {"enwiki": {"site": "enwiki", "title": "Paris (city)", "badges": []}},
    },
    {"type": "property", "id": "P31", "labels": {"en": {"language": "en", "value": "instance of"}}},
]


@pytest.mark.parametrize("suffix", ["json", "json.bz2", "json.gz"])
def test_wikidata_dump_to_kb(tmp_path, suffix):
    lines = ["["] + [json.dumps(item) + "," for item in WIKIDATA_ITEMS[:-1]] + [json.dumps(WIKIDATA_ITEMS[-1]), "{broken", "]"]
    data = "\n".join(lines).encode() + b"\n"
    compress = {"json": bytes, "json.bz2": bz2.compress, "json.gz": gzip.compress}[suffix]
    dump = tmp_path / f"latest-all.{suffix}"
    dump.write_bytes(compress(data))
    report = convert_wikidata(dump, tmp_path / "kb.jsonl", progress=False)
    assert read_kb(tmp_path / "kb.jsonl").entities == [
        Entity("London", "London", "capital and largest city of the United Kingdom", ["London, UK", "Londinium"], 2),
        Entity("Paris_(city)", "Paris (city)", "", ["Paris"], 1),
    ]
    assert (report.lines, report.entities, report.no_enwiki, report.bad_lines) == (5, 2, 2, 1)
    assert report.examples[0].startswith("line 6:")


def test_missing_dump_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="dump file not found"):
        list(iter_wikidata(tmp_path / "nothing.json.bz2"))
