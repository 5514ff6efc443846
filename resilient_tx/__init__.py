"""resilient-tx: loss-resilient learned image transmission (PQ-VAE + quincunx MIM)."""

__version__ = "0.1.0"
