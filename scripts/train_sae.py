"""Train SAEs with Accelerate: one CPU, one GPU, or many processes.

    python scripts/train_sae.py --hookpoints model.layers.15 --k 32
    torchrun --standalone --local_addr 127.0.0.1 --nproc_per_node 2 scripts/train_sae.py --output_dir outputs/ddp
    python scripts/train_sae.py config.yaml            # the same flags, from a YAML or JSON file

Each process harvests activations from its own shard of the text; the SAEs are saved once, by the main process.
"""

import sys

from hf_sae.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
