"""Convert an official DETR / Deformable DETR checkpoint: `python scripts/convert_official_checkpoint.py SOURCE
OUTPUT_DIR [--dc5]` (the same as `detrkit convert`)."""
import sys

from detrkit.conversion.convert_command import main

if __name__ == "__main__":
    sys.exit(main())
