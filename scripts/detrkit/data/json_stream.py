"""Parse a JSON object whose big arrays are transformed element by element, as they are decoded.

A COCO instances file of train2017's size decodes into some 50 million Python floats (the polygons) when parsed
at once; here each element of a chosen top-level array (``annotations``) is handed to a function as soon as it is
decoded, so only one element's worth of objects lives in their raw form. The walk over the top-level object is
the one the standard library's decoder performs, with its C scanner decoding every value.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["load_json_transformed"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _expect(text: str, pos: int, allowed: str, what: str) -> str:
    char = text[pos:pos + 1]
    if not char or char not in allowed:
        raise json.JSONDecodeError(f"expecting {what}", text, pos)
    return char


def _array(text: str, pos: int, decoder: json.JSONDecoder, transform: Callable[[Any], Any]) -> tuple[list, int]:
    """The array starting at ``text[pos] == "["``, each element transformed; and the position after it."""
    items, pos = [], _skip(text, pos + 1)
    if text[pos:pos + 1] == "]":
        return items, pos + 1
    while True:
        value, pos = decoder.raw_decode(text, pos)
        items.append(transform(value))
        pos = _skip(text, pos)
        if _expect(text, pos, ",]", "',' or ']'") == "]":
            return items, pos + 1
        pos = _skip(text, pos + 1)


def load_json_transformed(path: Path, transforms: dict[str, Callable[[Any], Any]]) -> Any:
    """``json.load`` of ``path``, except that the elements of each top-level array named in ``transforms`` are
    passed through its function while being decoded. A document that is not an object is returned as it is."""
    text = path.read_bytes().decode("utf-8-sig")
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    if text[pos:pos + 1] != "{":
        return json.loads(text)
    result, pos = {}, _skip(text, pos + 1)
    if text[pos:pos + 1] == "}":
        pos += 1
    else:
        while True:
            _expect(text, pos, '"', "a property name in double quotes")
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos)
            _expect(text, pos, ":", "':'")
            pos = _skip(text, pos + 1)
            if key in transforms and text[pos:pos + 1] == "[":
                result[key], pos = _array(text, pos, decoder, transforms[key])
            else:
                result[key], pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos)
            if _expect(text, pos, ",}", "',' or '}'") == "}":
                pos += 1
                break
            pos = _skip(text, pos + 1)
    if _skip(text, pos) != len(text):
        raise json.JSONDecodeError("extra data", text, _skip(text, pos))
    return result
