"""Networks: autoencoder, product quantizer, XCiT trunk and the masked token model."""

from resilient_tx.model.pqmim import PQMIM, ForwardOutput, pad_to_multiple

__all__ = ["PQMIM", "ForwardOutput", "pad_to_multiple"]
