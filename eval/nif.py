"""GERBIL NIF 2.0 Turtle: read datasets and predictions, write annotations (rdflib).

A document is a `nif:Context` with `nif:isString`; a mention is any other resource with
`nif:anchorOf`, `nif:beginIndex`, `nif:endIndex`, `nif:referenceContext` and (optionally)
`itsrdf:taIdentRef`. NIF offsets are UTF-16 code units, as GERBIL (Java) counts them; they are
converted to Python code-point offsets on reading and back on writing.

Entities: `taIdentRef` is mapped by `canonical_id`; a URI that is not DBpedia/Wikipedia is
followed through `owl:sameAs` (OKE individuals) and is NIL (None) when no link leads to
DBpedia/Wikipedia. A phrase without `taIdentRef` is NIL too. NIL annotations are written as
`http://aksw.org/notInWiki/<surface>`, the N3/GERBIL convention.

Documents come back sorted by context URI and annotations by (start, end), so the order is
deterministic whatever order the Turtle file has. Document ids are the context URIs; a doc id
that is not a URI (an AIDA id such as `1163testb SOCCER`) is written as `LOCAL_DOC_BASE` + its
percent-encoding and read back as the original id.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote, unquote

from rdflib import RDF, XSD, Graph, Literal, Namespace, URIRef
from rdflib.namespace import OWL

from kb.ids import canonical_id
from onegen.spans import Document, Mention

LOG = logging.getLogger(__name__)

NIF = Namespace("http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#")
ITSRDF = Namespace("http://www.w3.org/2005/11/its/rdf#")
DBPEDIA_RESOURCE = "http://dbpedia.org/resource/"
NOT_IN_WIKI = "http://aksw.org/notInWiki/"
LOCAL_DOC_BASE = "http://onegen-el.local/doc/"  # context URIs for doc ids that are not URIs
# ASCII characters left as they are in an entity IRI; other ASCII (space, quotes, <>, %, ?, #, ...)
# is percent-encoded, so canonical_id(entity_uri(x)) == x
IRI_SAFE = "!$&'()*+,;=:@/-._~"
SURROGATE = re.compile("[\ud800-\udfff]")  # UTF-16 surrogate halves: text only when two of them form a pair
IRI_FORBIDDEN = re.compile(r'[\x00-\x20<>"{}|^`\\]')  # characters Turtle's IRIREF cannot hold


class NifError(ValueError):
    """A NIF document that cannot be read: bad Turtle, or a phrase inconsistent with its context."""


def utf16_index(text: str, i: int) -> int:
    """UTF-16 code-unit offset of code-point offset `i` in `text`."""
    return len(text[:i].encode("utf-16-le")) // 2


def codepoint_index(text: str, u: int) -> int:
    """Code-point offset of UTF-16 code-unit offset `u` in `text`; ValueError if out of range or inside a pair."""
    encoded = text.encode("utf-16-le")
    if not 0 <= 2 * u <= len(encoded):
        raise ValueError(f"UTF-16 offset {u} is outside the text (0..{len(encoded) // 2})")
    try:
        return len(encoded[: 2 * u].decode("utf-16-le"))
    except UnicodeDecodeError:
        raise ValueError(f"UTF-16 offset {u} falls inside a surrogate pair (between the two halves of one character)") from None


def _iri_escape(title: str) -> str:
    """Percent-encode the ASCII characters an IRI path cannot hold; non-ASCII letters stay (IRI form)."""
    return "".join(c if ord(c) > 127 else quote(c, safe=IRI_SAFE) for c in title)


def entity_uri(entity_id: str) -> str:
    """DBpedia resource IRI of a canonical id (`canonical_id(entity_uri(x)) == x`)."""
    return DBPEDIA_RESOURCE + _iri_escape(entity_id)


def nil_uri(surface: str) -> str:
    """The N3 not-in-Wikipedia URI of a NIL mention."""
    return NOT_IN_WIKI + _iri_escape(surface.replace(" ", "_"))


def parse_graph(data: str | bytes, source: str = "<data>", base: str | None = None) -> Graph:
    """Parse Turtle into an rdflib Graph, relative IRIs resolved against `base` (default: rdflib's, the working
    folder); NifError naming `source` (and rdflib's line) when it is not Turtle."""
    graph = Graph()
    try:
        graph.parse(data=data, format="turtle", publicID=base)
    except Exception as e:  # rdflib raises BadSyntax, UnicodeDecodeError, ValueError, ... for bad input
        raise NifError(f"{source}: not valid Turtle: {e}") from e
    return graph


def _join_surrogates(value: str, source: str) -> str:
    """`value` with each surrogate pair (one character written as two \\u escapes) joined; NifError on a lone half."""
    try:
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError as e:
        unit = int.from_bytes(e.object[e.start:e.start + 2], "little")
        raise NifError(f"{source}: lone UTF-16 surrogate \\u{unit:04X} in {value[:80]!r}; write a character above "
                       f"U+FFFF as one \\U escape or as two \\u escapes that form a pair") from None


def _normal_term(term, source: str):
    """`term` with surrogate pairs joined; NifError for a lone surrogate or an IRI that Turtle cannot write."""
    value = str(term)
    joined = _join_surrogates(value, source) if SURROGATE.search(value) else value
    if isinstance(term, URIRef):
        bad = IRI_FORBIDDEN.search(joined)
        if bad:
            raise NifError(f"{source}: IRI {joined[:200]!r} holds {bad.group()!r}, which an IRI cannot hold; "
                           f"percent-encode it (a space is %20)")
        return URIRef(joined) if joined != value else term
    if isinstance(term, Literal) and joined != value:
        return Literal(joined, lang=term.language, datatype=term.datatype)
    return term


def normalise_terms(graph: Graph, source: str = "<data>") -> None:
    """Join surrogate pairs written as two \\u escapes into their character, in place; NifError on a lone
    surrogate or an IRI Turtle cannot write (space, <, >, ", ...), so the graph can be written back."""
    for triple in list(graph):
        normal = tuple(_normal_term(term, source) for term in triple)
        if normal != triple:
            graph.remove(triple)
            graph.add(normal)


def doc_id_of(context: URIRef) -> str:
    """Document id of a context URI (inverse of `context_uri`)."""
    uri = str(context)
    return unquote(uri[len(LOCAL_DOC_BASE):]) if uri.startswith(LOCAL_DOC_BASE) else uri


def context_uri(doc_id: str) -> URIRef:
    """Context URI of a document id: the id itself when it is a URI, else under LOCAL_DOC_BASE."""
    return URIRef(doc_id if "://" in doc_id else LOCAL_DOC_BASE + quote(doc_id, safe=""))


def _entity(graph: Graph, phrase) -> str | None:
    """Canonical entity of a phrase: taIdentRef directly, or through owl:sameAs; None = NIL."""
    for ref in sorted(graph.objects(phrase, ITSRDF.taIdentRef)):
        entity = canonical_id(str(ref))
        if entity is not None:
            return entity
        for same in sorted(graph.objects(ref, OWL.sameAs)):
            entity = canonical_id(str(same))
            if entity is not None:
                return entity
    return None


def _one(graph: Graph, subject, predicate, source: str):
    values = list(graph.objects(subject, predicate))
    if len(values) != 1:
        raise NifError(f"{source}: {subject} has {len(values)} values of {predicate.n3(graph.namespace_manager)}, expected exactly 1")
    return values[0]


def documents_of(graph: Graph, skip_bad: bool = False, source: str = "<data>") -> list[Document]:
    """Documents (contexts with their phrases) of a parsed NIF graph."""
    contexts = {c: str(_one(graph, c, NIF.isString, source)) for c in graph.subjects(NIF.isString, None)}
    annotations: dict = {c: [] for c in contexts}
    for phrase in set(graph.subjects(NIF.anchorOf, None)) - contexts.keys():
        try:
            context = _one(graph, phrase, NIF.referenceContext, source)
            if context not in contexts:
                raise NifError(f"{source}: phrase {phrase} refers to {context}, which is not a nif:Context with nif:isString")
            text = contexts[context]
            anchor = str(_one(graph, phrase, NIF.anchorOf, source))
            begin16, end16 = _one(graph, phrase, NIF.beginIndex, source), _one(graph, phrase, NIF.endIndex, source)
            try:
                start, end = codepoint_index(text, int(begin16)), codepoint_index(text, int(end16))
            except ValueError as e:
                raise NifError(f"{source}: document {context}: phrase {phrase} has bad offsets "
                               f"({begin16}, {end16}): {e}") from None
            if text[start:end] != anchor:
                raise NifError(f"{source}: document {context}: phrase {phrase} has anchorOf {anchor!r} but its offsets "
                               f"give {text[start:end]!r}; fix the offsets or read with skip_bad=True to skip it")
        except NifError as e:
            if not skip_bad:
                raise
            LOG.warning("skipping phrase: %s", e)
            continue
        annotations[context].append(Mention(start, end, anchor, _entity(graph, phrase)))
    return [
        Document(doc_id_of(c), contexts[c], sorted(annotations[c], key=lambda a: (a.start, a.end, a.entity_id or "")))
        for c in sorted(contexts, key=str)
    ]


def parse_nif(data: str | bytes, skip_bad: bool = False, source: str = "<data>") -> list[Document]:
    """Documents of NIF Turtle text; `skip_bad` logs and skips inconsistent phrases instead of raising NifError."""
    return documents_of(parse_graph(data, source), skip_bad=skip_bad, source=source)


def read_nif(path: str | Path, skip_bad: bool = False) -> list[Document]:
    """Documents of a NIF Turtle file (see `parse_nif`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIF file not found: {path}")
    return parse_nif(path.read_bytes(), skip_bad=skip_bad, source=str(path))


def add_annotations(graph: Graph, context: URIRef, text: str, annotations: list[Mention]) -> None:
    """Add one nif:Phrase per annotation (UTF-16 offsets, taIdentRef or notInWiki) to `graph`."""
    base = str(context).split("#", 1)[0]
    used = {str(context)}
    for a in annotations:
        begin, end = utf16_index(text, a.start), utf16_index(text, a.end)
        uri, n = f"{base}#char={begin},{end}", 1
        while uri in used:  # a second annotation on the same span, or a span equal to the context's
            n += 1
            uri = f"{base}#char={begin},{end}_{n}"
        used.add(uri)
        phrase = URIRef(uri)
        for kind in (NIF.Phrase, NIF.String, NIF.RFC5147String):
            graph.add((phrase, RDF.type, kind))
        graph.add((phrase, NIF.anchorOf, Literal(text[a.start:a.end])))
        graph.add((phrase, NIF.beginIndex, Literal(begin, datatype=XSD.nonNegativeInteger)))
        graph.add((phrase, NIF.endIndex, Literal(end, datatype=XSD.nonNegativeInteger)))
        graph.add((phrase, NIF.referenceContext, context))
        ref = entity_uri(a.entity_id) if a.entity_id is not None else nil_uri(text[a.start:a.end])
        graph.add((phrase, ITSRDF.taIdentRef, URIRef(ref)))


def new_graph() -> Graph:
    """An empty graph with the NIF prefixes bound."""
    graph = Graph()
    graph.bind("nif", NIF)
    graph.bind("itsrdf", ITSRDF)
    graph.bind("xsd", XSD)
    return graph


def to_nif(docs: list[Document]) -> str:
    """Turtle for `docs`: one nif:Context per document and one nif:Phrase per annotation, UTF-16 offsets."""
    graph = new_graph()
    for doc in docs:
        context = context_uri(doc.doc_id)
        for kind in (NIF.Context, NIF.String, NIF.RFC5147String):
            graph.add((context, RDF.type, kind))
        graph.add((context, NIF.isString, Literal(doc.text)))
        graph.add((context, NIF.beginIndex, Literal(0, datatype=XSD.nonNegativeInteger)))
        graph.add((context, NIF.endIndex, Literal(utf16_index(doc.text, len(doc.text)), datatype=XSD.nonNegativeInteger)))
        add_annotations(graph, context, doc.text, doc.mentions)
    return graph.serialize(format="turtle")
