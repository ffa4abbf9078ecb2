"""`python -m vllm.entrypoints.openai.api_server [flags]`: `pagedserve serve [flags]` (see vllm/__init__.py)."""

import sys

from pagedserve.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
