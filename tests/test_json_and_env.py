"""The one JSON reading contract (transfer.atomic) and the one rule for environment variables
(transfer.environment)."""

import json

import pytest

from transfer.atomic import MAX_JSON_DEPTH, parse_json, read_json, write_json
from transfer.environment import EmptySettingError, env_setting


def test_json_round_trip_and_brackets_inside_strings_do_not_count(tmp_path):
    doc = {"a": [1, {"b": "[[[[{{{{" * 40}], "c": 'quote " and \\ backslash'}
    write_json(tmp_path / "x.json", doc)
    assert read_json(tmp_path / "x.json") == doc


@pytest.mark.parametrize("depth, refused", [(MAX_JSON_DEPTH, False), (MAX_JSON_DEPTH + 1, True), (100_000, True)])
def test_nesting_is_bounded_before_parsing(depth, refused):
    text = "[" * depth + "]" * depth
    if refused:
        with pytest.raises(ValueError, match="nested deeper than 64 levels"):
            parse_json(text, what="card.json")
    else:
        assert json.dumps(parse_json(text)).count("[") == depth


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin\.json: not a UTF-8 text file"):
        read_json(tmp_path / "bin.json")


def test_environment_rule_unset_default_set_value_empty_error(monkeypatch):
    monkeypatch.delenv("SPARTA_TEST_SETTING", raising=False)
    assert env_setting("SPARTA_TEST_SETTING") is None
    monkeypatch.setenv("SPARTA_TEST_SETTING", "/some/dir")
    assert env_setting("SPARTA_TEST_SETTING") == "/some/dir"
    for empty in ("", "  "):
        monkeypatch.setenv("SPARTA_TEST_SETTING", empty)
        with pytest.raises(EmptySettingError, match="SPARTA_TEST_SETTING is set but empty; unset it"):
            env_setting("SPARTA_TEST_SETTING")
