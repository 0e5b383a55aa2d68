"""Prepare pretraining data: sources -> datatrove cleaning -> BPE tokenizer -> packed blocks (cached).

    python recipes/prepare_data.py                                               # embedded synthetic math (default)
    python recipes/prepare_data.py --config recipes/configs/data_gutenberg.yaml  # local books + synthetic math
    python recipes/prepare_data.py --config recipes/configs/data_fineweb_edu.yaml  # Hub corpus, streamed (online)
    python recipes/prepare_data.py --vocab_size 4096 --block_size 512           # any field can be overridden

Writes `<output_root>/<name>/{clean,tokenizer,packed}/` + `manifest.json`; re-running with the same config
reuses it. `hfscratch data` runs the same `main` (hfscratch/data/cli.py).
"""

import sys

from hfscratch.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("data", sys.argv[1:]))
