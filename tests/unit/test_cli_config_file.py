"""vLLM's `serve --config FILE` (cli/config_file.py): YAML keys become the serve flags, before the command line's
own, so the command line wins; booleans, lists and objects map as vLLM maps them; bad files are named."""

from __future__ import annotations

import pathlib

import pytest

from pagedserve.cli.config_file import expand_config_file
from pagedserve.cli.main import build_parser, main


def parse(tmp_path: pathlib.Path, text: str, *argv: str):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    parser = build_parser()
    return parser.parse_args(expand_config_file(["serve", "--config", str(config), *argv], parser))


def test_keys_become_flags_and_the_command_line_wins(tmp_path: pathlib.Path) -> None:
    args = parse(
        tmp_path,
        "model: org/name\nport: 9000\nmax_model_len: 2048\nenable-prefix-caching: false\nenforce-eager: true\n"
        "served-model-name: [a, b]\nspeculative-config: {method: ngram, num_speculative_tokens: 3}\n"
        "allowed-origins: ['https://app.example']\nlora-modules:\n  - {name: sql, path: /a/sql}\n",
        "--port", "9001",
    )  # fmt: skip
    assert args.model == "org/name" and args.port == 9001 and args.max_model_len == 2048
    assert args.enable_prefix_caching is False and args.enforce_eager is True
    assert args.served_model_name == ["a", "b"] and args.allowed_origins == ["https://app.example"]
    assert args.speculative_config.num_speculative_tokens == 3
    assert args.lora_modules == ['{"name": "sql", "path": "/a/sql"}']


def test_unknown_keys_and_unsupported_flags_are_named(tmp_path: pathlib.Path, capsys) -> None:
    with pytest.raises(SystemExit):
        parse(tmp_path, "max-modle-len: 10\n")
    assert "--max-modle-len" in capsys.readouterr().err
    args = parse(tmp_path, "cpu-offload-gb: 4\n")  # refused by name when the server starts
    assert args.unsupported_cpu_offload_gb == "4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- port\n", "expected a mapping"),
        ("port: [\n", "cannot read it as YAML"),
        ("config: x.yaml\n", "another"),
    ],
)
def test_bad_files_stop_with_one_line(tmp_path: pathlib.Path, capsys, text: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pagedserve serve: error: --config") and message in err
    assert main(["serve", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_other_commands_and_no_config_are_left_alone() -> None:
    parser = build_parser()
    assert expand_config_file(["plan", "--config", "x"], parser) == ["plan", "--config", "x"]
    assert expand_config_file(["serve", "--port", "1"], parser) == ["serve", "--port", "1"]
