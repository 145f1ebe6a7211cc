"""``LCP_EMBED_CONCURRENCY``: how many mapped embed_images tasks of a run may run at once."""

from __future__ import annotations

import pytest

from common.dag_defaults import EMBED_CONCURRENCY_ENV, embed_concurrency


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("3", 3), ("1", 1), ("0", 1), ("-2", 1),
                                                 ("two", 1), ("", 1)])
def test_embed_concurrency_is_a_positive_integer_and_one_by_default(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(EMBED_CONCURRENCY_ENV, raising=False)
    else:
        monkeypatch.setenv(EMBED_CONCURRENCY_ENV, value)
    assert embed_concurrency() == expected
