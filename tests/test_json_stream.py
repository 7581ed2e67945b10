"""The element-wise JSON reader against the standard library's json on generated documents and broken files."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from detrkit.data.json_stream import load_json_transformed

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)
documents = st.dictionaries(st.sampled_from(["images", "annotations", "categories", "info", "a\"b", "ü"]),
                            st.lists(values, max_size=5) | values, max_size=6)
layouts = st.sampled_from([dict(), dict(indent=2), dict(separators=(",", ":")), dict(indent="\t", ensure_ascii=False),
                           dict(separators=(" ,  ", " :  "))])


@settings(max_examples=300, deadline=None)
@given(documents, layouts)
def test_same_as_json_load(tmp_path_factory, document, layout):
    path = tmp_path_factory.mktemp("doc") / "doc.json"
    path.write_text(" \n" + json.dumps(document, **layout) + "\n\t", encoding="utf-8")
    seen = []
    tagged = load_json_transformed(path, {"annotations": lambda v: seen.append(v) or ("seen", v)})
    assert json.loads(path.read_text(encoding="utf-8")) == document
    expected = dict(document)
    if isinstance(document.get("annotations"), list):
        expected["annotations"] = [("seen", v) for v in document["annotations"]]
        assert seen == document["annotations"]
    assert tagged == expected


def test_not_an_object_and_nan(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text("[1, 2]")
    assert load_json_transformed(path, {"annotations": str}) == [1, 2]
    path.write_text('{"annotations": [{"bbox": [NaN, 1, 2, 3]}]}')  # Python's json writes NaN
    box = load_json_transformed(path, {"annotations": lambda v: v})["annotations"][0]["bbox"]
    assert box[0] != box[0] and box[1:] == [1, 2, 3]


@pytest.mark.parametrize("text", ['{"annotations": [1, 2', '{"annotations": [1 2]}', '{"a": 1} x', '{"a" 1}',
                                  '{a: 1}', '{"annotations": [1,]}', '{"a": 1,}', ''])
def test_broken_documents_raise_like_json(tmp_path, text):
    path = tmp_path / "doc.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        load_json_transformed(path, {"annotations": lambda v: v})
