"""One boolean / number parser (grace_bench.utils.parsing) behind config files and method arguments."""

from __future__ import annotations

import pytest

from grace_bench.errors import UserError
from grace_bench.finetune.config import FinetuneConfig, validate_config
from grace_bench.finetune.methods.base import coerce_like
from grace_bench.utils.parsing import parse_bool, parse_number


@pytest.mark.parametrize("text, value", [("on", True), ("OFF", False), (" yes ", True), ("0", False), (1, True)])
def test_config_files_and_method_arguments_read_booleans_alike(text, value):
    assert parse_bool(text) is value
    assert coerce_like(False, text, "flag") is value
    assert validate_config(FinetuneConfig(progress=text)).progress is value


@pytest.mark.parametrize("bad", ["maybe", 2, None, "truthy"])
def test_bad_booleans_fail_everywhere(bad):
    with pytest.raises(ValueError):
        parse_bool(bad)
    with pytest.raises(UserError, match="'progress' must be true or false"):
        validate_config(FinetuneConfig(progress=bad))


def test_numbers_accept_fractions():
    assert parse_number("4/255") == pytest.approx(4 / 255) and parse_number(" 1e-5 ") == 1e-5
    with pytest.raises(ValueError):
        parse_number(True)
