"""XML parsing that refuses what JATS never needs: entity declarations (expansion bombs, external entities), loading
of external DTDs or parameter entities, and absurdly deep nesting.

JATS files name their DTD in a DOCTYPE; it is never fetched. Element and attribute names are kept as local names
(namespace prefixes dropped), so files that use `xlink:` or `mml:` without declaring them (relying on DTD defaults)
still parse.
"""
from __future__ import annotations

import xml.parsers.expat
from xml.etree.ElementTree import Element, TreeBuilder

from biomedclip.pmc.skips import Skipped

MAX_DEPTH = 256


def local_name(name: str) -> str:
    return name.rpartition(":")[2]


def parse_xml(data: bytes, *, max_depth: int = MAX_DEPTH) -> Element:
    """Parses `data` into an ElementTree element; raises Skipped('forbidden_xml' | 'malformed_xml')."""
    builder = TreeBuilder()
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > max_depth:
            raise Skipped("malformed_xml", f"elements nest deeper than {max_depth} levels")
        builder.start(local_name(name), {local_name(k): v for k, v in attrs.items() if not k.startswith("xmlns")})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(local_name(name))

    def refuse_entity(name: str, *_args) -> None:
        raise Skipped("forbidden_xml", f"the document declares entity {name!r}")

    def refuse_external(_context, _base, system_id, _public_id) -> int:
        raise Skipped("forbidden_xml", f"the document references external entity {system_id!r}")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_external
    # An undeclared named entity (possible when the DTD is external and not read) is dropped, not expanded.
    parser.SkippedEntityHandler = lambda _name, _is_param: None
    try:
        parser.Parse(data, True)
        return builder.close()
    except xml.parsers.expat.ExpatError as err:
        raise Skipped("malformed_xml", str(err)) from None
    except (AssertionError, IndexError) as err:  # TreeBuilder on unbalanced input
        raise Skipped("malformed_xml", f"unbalanced document: {err}") from None
