"""Build the sandbox image if it is missing: `python sandbox_image/build.py [--force]`.

Used by `make image`, `make run` and CI. The tag carries a content hash of the Dockerfile, the
pinned requirements and the harness, so running this when nothing changed returns in seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.image import ensure_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the tag exists (layers stay cached)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        tag = ensure_image(force=args.force)
    except InfrastructureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{tag} ready in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
