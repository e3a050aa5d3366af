"""Enum words round-trip for every enum of the contract, and bad words name the allowed ones."""

import pytest

from linesight.common.enums import enum_value, enum_word, enum_words
from linesight.common.pb import common_pb2


@pytest.mark.parametrize("enum", [common_pb2.Verdict, common_pb2.Severity])
def test_words_round_trip(enum):
    words = enum_words(enum)
    assert words and all(w == w.lower() and "_unspecified" not in w for w in words)
    for word in words:
        assert enum_word(enum, enum_value(enum, word)) == word
        assert enum_value(enum, word.upper()) == enum_value(enum, word)


def test_unspecified_and_unknown():
    assert enum_word(common_pb2.Verdict, 0) == ""
    assert enum_word(common_pb2.Verdict, 999) == "999"
    assert enum_value(common_pb2.Verdict, "VERDICT_REVIEW") == common_pb2.VERDICT_REVIEW
    with pytest.raises(ValueError, match=r"expected one of: .*critical"):
        enum_value(common_pb2.Severity, "huge")
    with pytest.raises(ValueError):
        enum_value(common_pb2.Severity, "unspecified")
