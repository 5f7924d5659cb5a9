"""Fixtures shared by the test modules."""

import pytest

from jitauth._core import Matcher
from jitauth.reference import ReferenceMatcher


@pytest.fixture(params=[Matcher, ReferenceMatcher],
                ids=["compiled", "reference"])
def matcher_class(request):
    """Each matcher test runs once per implementation, named in its id."""
    return request.param
