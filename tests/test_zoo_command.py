"""The card's ``command``: the argv that produced an entry, an optional provenance field (older cards have
none), carried through save, load, export and import, shown by ``sparta zoo info`` and the README as
lines a shell reads back to the same argv."""

from __future__ import annotations

import json
import shlex

import pytest
from helpers import sparta_model

from transfer import extract
from transfer.cli import main
from zoo import Registry, ZooError
from zoo.readme import command_lines

COMMAND = [
    "sparta",
    "train",
    "--dataset",
    "digits",
    "--activation",
    "sparta",
    "--variant",
    "dw",
    "--attacks",
    "clean,pgd20,apgd-ce+t",
    "--activation-config",
    '{"beta": 2.0}',
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def aset():
    return extract(sparta_model(width=4, input_size=8), meta={"arch": "resnet18", "dataset": "digits"})


def _shell_words(lines: list[str]) -> list[str]:
    """What a shell reads from ``lines`` pasted as they are (backslash-newline continues the line)."""
    return shlex.split("\n".join(lines).replace("\\\n", " "))


def test_the_command_travels_with_the_entry_through_save_load_export_and_import(tmp_path, aset):
    registry = Registry(tmp_path / "zoo", bundled_root=None)
    registry.save("run", aset, card={"command": COMMAND})
    card = registry.info("run")
    assert card["command"] == card["meta"]["command"] == COMMAND
    assert registry.load("run").meta["command"] == COMMAND
    exported = registry.export("run", tmp_path / "run.safetensors")
    assert registry.info(str(registry.import_file(exported, name="copy")))["command"] == COMMAND
    registry.export("run", tmp_path / "hf", format="hf")
    assert registry.info(str(registry.import_file(tmp_path / "hf", name="hub")))["command"] == COMMAND


def test_a_card_without_a_command_reads_as_before(tmp_path, aset):
    registry = Registry(tmp_path / "zoo", bundled_root=None)
    ref = registry.save("plain", aset)
    assert registry.info("plain")["command"] is None
    card_path = ref.path / "card.json"
    card = json.loads(card_path.read_text())
    del card["command"]  # as written before the field existed
    assert "command" not in card["meta"]
    card_path.write_text(json.dumps(card))
    assert registry.info("plain").get("command") is None
    assert registry.load("plain").tensors.keys() == aset.tensors.keys()
    assert "The command that produced it" not in (ref.path / "README.md").read_text()


@pytest.mark.parametrize("bad", ["sparta train --seed 0", [], ["sparta", 1], {"argv": COMMAND}])
def test_a_command_that_is_not_an_argv_is_refused_naming_the_field(tmp_path, aset, bad):
    with pytest.raises(ZooError, match="'command' must be null or the command's argv"):
        Registry(tmp_path / "zoo", bundled_root=None).save("bad", aset, card={"command": bad})
    assert not (tmp_path / "zoo" / "bad").exists()


def test_info_and_the_readme_show_the_command_as_lines_a_shell_reads_back(tmp_path, aset, capsys):
    ref = Registry(tmp_path, bundled_root=None).save("run", aset, card={"command": COMMAND})
    assert main(["zoo", "info", str(ref), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("  command      "))
    end = next(i for i in range(start, len(out)) if not out[i].endswith("\\"))
    shown = [out[start].removeprefix("  command      ")] + [line.strip() for line in out[start + 1 : end + 1]]
    assert _shell_words(shown) == COMMAND and all(len(line) <= 100 for line in out[start : end + 1])
    readme = (ref.path / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert _shell_words(block) == COMMAND


def test_command_lines_keep_each_option_with_its_value_and_quote_what_needs_it():
    lines = command_lines(COMMAND, width=40)
    assert _shell_words(lines) == COMMAND
    one_option = [line.strip().removesuffix(" \\") for line in lines if len(line) > 40]
    assert len(lines) > 3 and all(" -" not in line for line in one_option)  # longer only if one option
    assert any(line.strip().startswith("--attacks clean,pgd20,apgd-ce+t") for line in lines)
    assert "--activation-config '{\"beta\": 2.0}'" in " ".join(lines)
    assert command_lines(["sparta"]) == ["sparta"]
