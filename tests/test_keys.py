"""The sample keys: plain strings, one per name, each documented."""

from __future__ import annotations

import ast
import inspect

from breastai.core.keys import Keys


def _constants() -> dict[str, str]:
    return {k: v for k, v in vars(Keys).items() if k.isupper()}


def test_keys_are_the_plain_strings_of_their_names():
    keys = _constants()
    assert {"IMAGE", "MASK", "LABEL", "CASE_ID", "GROUP", "INDEX", "HAS_MASK", "BOX", "ORIG_SHAPE", "READER_META",
            "FRAME", "RADIOMICS"} <= set(keys)
    for name, value in keys.items():
        assert type(value) is str and value == name.lower(), name  # datalists and checkpoints hold these strings
    assert len(set(keys.values())) == len(keys)


def test_every_key_says_what_it_holds():
    body = ast.parse(inspect.getsource(Keys)).body[0].body
    documented = {a.targets[0].id for a, b in zip(body, body[1:])
                  if isinstance(a, ast.Assign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}
    assert documented == set(_constants())
