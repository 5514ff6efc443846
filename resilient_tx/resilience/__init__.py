"""The loss-resilient packet layer, sans-IO: images to packets and packets to images.

``packet`` is the self-describing wire format; ``packetizer`` codes each quincunx stage
into independently decodable chunks and adds Reed-Solomon parity (``fec``, planned for a
loss rate by ``uep``); ``collector`` groups arriving datagrams into images and decides
when each is due; ``reassembly`` recovers what FEC can and decodes exactly what the
received context allows; ``endpoint`` ties these to the codec and the inpainters as a
whole-image ``Sender`` and ``Receiver``. Nothing here opens a socket, sleeps or reads a
clock of its own: callers pass bytes and timestamps in, as with aiortc's jitter buffer,
so the same code runs under any transport, in simulations and in tests.
"""
