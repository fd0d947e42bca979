"""``python train.py --config X [key=value ...]`` is ``breastai train --config X [key=value ...]``.

Also the script to hand to torchrun: ``torchrun --nproc_per_node N train.py --config X``.
"""

import sys

from breastai.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
