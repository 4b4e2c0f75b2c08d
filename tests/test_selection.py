from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from payload.errors import ConfigError, InconsistentDataError
from payload.ingest.selection import compile_selection

ARRAYS = {
    "njets": ak.Array([1, 2, 3, 4]),
    "met": ak.Array([10.0, 60.0, 30.0, 80.0]),
    "jet_pt": ak.Array([[30.0], [50.0, 20.0], [200.0, 40.0, 30.0], [35.0, 30.0, 28.0, 26.0]]),
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("njets >= 2 and met > 50", [False, True, False, True]),
        ("not (met > 50) or njets == 1", [True, False, True, False]),
        ("20 < met < 70", [False, True, True, False]),
        ("any(jet_pt > 100)", [False, False, True, False]),
        ("count(jet_pt) == njets", [True, True, True, True]),
        ("sqrt(met) > 5", [False, True, True, True]),
    ],
)
def test_expressions(expression, expected):
    sel = compile_selection(expression)
    np.testing.assert_array_equal(sel.evaluate(ARRAYS), expected)


def test_branches_collected():
    assert compile_selection("njets >= 2 and any(jet_pt > 100)").branches == ("njets", "jet_pt")


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "met.__class__", "[x for x in met]", "lambda: 1", "open('f')", "met[0] > 1"]
)
def test_code_is_refused(expression):
    with pytest.raises(ConfigError):
        compile_selection(expression)


def test_per_object_selection_is_explained():
    with pytest.raises(InconsistentDataError, match="any"):
        compile_selection("jet_pt > 25").evaluate(ARRAYS)
