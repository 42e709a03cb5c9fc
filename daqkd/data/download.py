"""``python -m daqkd.data.download NAME [ROOT]``: fetch a data set with torchvision (needs a network)."""
from __future__ import annotations

import sys
from pathlib import Path

from daqkd.data.sources import load_image_sets
from daqkd.errors import reported_as_one_line


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if len(argv) > 2:
        print(f"daqkd: error: expected NAME [ROOT], got {len(argv)} arguments: {' '.join(argv)}", file=sys.stderr)
        return 2
    name, root = argv[0], Path(argv[1] if len(argv) > 1 else "data")
    with reported_as_one_line():
        train, test = load_image_sets(name, root, download=True)
    print(f"{name}: {len(train)} training and {len(test)} test images (found or fetched for {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
