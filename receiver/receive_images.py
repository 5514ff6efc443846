"""Example receiver: the same as `resilient-tx recv`, as a runnable script.

    python receiver/receive_images.py --listen 0.0.0.0:5004 --out-dir received --count 1
"""

import sys

from resilient_tx.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["recv", *sys.argv[1:]]))
