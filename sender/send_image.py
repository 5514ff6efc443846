"""Example sender: the same as `resilient-tx send IMG --to HOST`, as a runnable script.

    python sender/send_image.py resilient_tx/samples/kodim23.png --to 127.0.0.1 --sim-loss 0.3
"""

import sys

from resilient_tx.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["send", *sys.argv[1:]]))
