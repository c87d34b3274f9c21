from __future__ import annotations

import jsonschema
import pytest

from agentr1_nb.config import Config
from agentr1_nb.data import Passage
from agentr1_nb.retrieval import Hit
from agentr1_nb.tools import CalculatorTool, SearchTool, ToolResult, cut, make_tools


class FakeRetriever:
    """Returns passages whose title or text shares a word with the query, in corpus order."""

    def __init__(self, passages):
        self.passages = passages
        self.queries = []

    def search(self, query, k):
        self.queries.append((query, k))
        words = set(query.lower().split())
        hits = [
            Hit(p, 1.0)
            for p in self.passages
            if words & set((p.title + " " + p.text).lower().replace(".", "").split())
        ]
        return hits[:k]


PASSAGES = [
    Passage("p1", "Alpha", "Alpha is a town in Norland. It was founded in 1820."),
    Passage("p2", "Beta", "Beta is a river that flows through Alpha."),
    Passage("p3", "Gamma", "Gamma is a mountain."),
]


def test_search_formats_passages_with_titles():
    tool = SearchTool(FakeRetriever(PASSAGES), k=2, max_chars=1000)
    res = tool.execute({"query": "alpha"})
    assert res.ok and res.error is None
    assert res.content.splitlines() == [
        "Doc 1 (Title: Alpha) Alpha is a town in Norland. It was founded in 1820.",
        "Doc 2 (Title: Beta) Beta is a river that flows through Alpha.",
    ]
    assert res.data["titles"] == ["Alpha", "Beta"]
    assert res.data["passages"] == ["p1", "p2"]
    assert tool.retriever.queries == [("alpha", 2)]


def test_search_cut_to_max_chars_and_titles_only_visible():
    tool = SearchTool(FakeRetriever(PASSAGES), k=3, max_chars=60)
    res = tool.execute({"query": "alpha"})
    assert len(res.content) == 60 and res.content.endswith("...")
    assert res.data["truncated"]
    # the second passage's header is cut away, so the model never saw its title
    assert res.data["titles"] == ["Alpha"]
    assert res.data["all_titles"] == ["Alpha", "Beta"]


def test_search_no_hits_and_empty_query():
    tool = SearchTool(FakeRetriever(PASSAGES), k=3, max_chars=100)
    res = tool.execute({"query": "zzz"})
    assert res.ok and res.content == "No passages found." and res.data["titles"] == []
    bad = tool.execute({"query": "   "})
    assert not bad.ok and "empty" in bad.error


def test_schema_format_and_validation():
    tool = SearchTool(FakeRetriever(PASSAGES))
    s = tool.schema()
    assert s["type"] == "function"
    assert s["function"]["name"] == "search"
    params = s["function"]["parameters"]
    jsonschema.validate({"query": "x"}, params)
    for bad in ({}, {"query": 3}, {"query": ""}, {"query": "x", "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, params)


@pytest.mark.parametrize(
    "expr,value", [("1+2*3", 7), ("(3 + 4) * 2 / 7", 2), ("-2**3", -8), ("7 // 2", 3), ("1/4", 0.25)]
)
def test_calculator(expr, value):
    res = CalculatorTool().execute({"expression": expr})
    assert res.ok, res.error
    assert res.data["value"] == value
    assert res.content == str(value)


@pytest.mark.parametrize(
    "expr",
    ["1/0", "__import__('os')", "9**9**9", "x + 1", "1 +", "[1, 2]", "1e308*1e308", "2**0.5j", "a" * 300],
)
def test_calculator_rejects_without_raising(expr):
    res = CalculatorTool().execute({"expression": expr})
    assert isinstance(res, ToolResult)
    assert not res.ok and res.error
    assert res.content.startswith("Error:")


@pytest.mark.parametrize(
    "expr", ["1e999", "-1e999", "1e999 - 1e999", "1e999 * 0", "9" * 150, "1e300 / 1e-300"]
)
def test_calculator_numbers_out_of_range_are_an_error_result_not_inf(expr):
    """`1e999` parses as inf: the result names the range instead of reading "inf" or "nan"."""
    res = CalculatorTool().execute({"expression": expr})
    assert not res.ok and "out of range" in res.error and res.content.startswith("Error:")
    assert "inf" not in res.content and "nan" not in res.content


def test_calculator_keeps_numbers_inside_the_range():
    res = CalculatorTool().execute({"expression": "1e99 * 10"})
    assert res.ok and res.data["value"] == 1e100


def test_cut():
    assert cut("abcdef", 10) == "abcdef"
    assert cut("abcdefghij", 6) == "abc..."
    assert cut("abcdef", 2) == "ab"


def test_make_tools_uses_config():
    cfg = Config(top_k=2, max_tool_chars=50)
    (tool,) = make_tools(cfg, FakeRetriever(PASSAGES))
    assert isinstance(tool, SearchTool) and tool.k == 2 and tool.max_chars == 50
