"""The codec layer: image <-> tokens <-> bitstreams, and token inpainting.

``partition`` splits the token grid into quincunx stages, ``entropy`` turns logits into
bit-exact integer CDFs and torchac bitstreams, ``layout`` decides which tokens of a stage
share a chunk, ``stage_coder`` codes a grid stage by stage under a context rule (whole
stages for files, chunks for packets), ``container`` is the ``.rtx`` file, ``image_codec``
binds a model to all of it, and ``inpaint`` fills tokens that never arrived.
"""

from resilient_tx.codec.container import EncodedImage, StageStream
from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.stage_coder import StageCoder

__all__ = ["Codec", "EncodedImage", "StageCoder", "StageStream"]
