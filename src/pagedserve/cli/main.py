"""`pagedserve` console script: one subcommand per module, each with `add_parser(subparsers)`.

Subcommand modules keep heavy imports (torch, transformers, kubernetes) inside their handlers so that
`pagedserve --help` and `pagedserve plan` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under pagedserve.cli
SUBCOMMANDS = {
    "generate": "generate",
    "serve": "serve",
    "bench": "bench",
    "preflight": "preflight",
    "plan": "plan",
}


def build_parser() -> argparse.ArgumentParser:
    from pagedserve import __version__
    from pagedserve.cpu_info import cpu_info

    parser = argparse.ArgumentParser(
        prog="pagedserve",
        description="LLM serving with PagedAttention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # --version keeps its two lines
    )
    version = f"pagedserve {__version__}\nCPU: {cpu_info().describe()}"
    parser.add_argument("--version", action="version", version=version)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(f"pagedserve.cli.{module_name}")
        module.add_parser(subparsers)
    return parser


def dash_flag_names(argv: list[str]) -> list[str]:
    """`--max_num_batched_tokens 1024` as `--max-num-batched-tokens 1024`: vLLM's parser takes either spelling (its
    own Kubernetes example uses underscores), so ours does too. Only a flag's name changes, never a value."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, equals, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + equals + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    from pagedserve.cli.config_file import expand_config_file

    parser = build_parser()
    argv = dash_flag_names(list(sys.argv[1:] if argv is None else argv))
    try:
        argv = expand_config_file(argv, parser)
    except ValueError as error:
        print(f"pagedserve serve: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    code = args.func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
