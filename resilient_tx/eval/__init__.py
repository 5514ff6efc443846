"""Evaluation: image-quality metrics and the classical baselines the codec is compared with.

:mod:`~resilient_tx.eval.metrics` fixes what every reported number means (PSNR, MS-SSIM,
bits per pixel, all on uint8 RGB) and runs the classic codecs JPEG and WebP through Pillow
at a given quality or byte budget; :mod:`~resilient_tx.eval.jpeg_baseline` sends JPEG over
the same lossy packet channel as the learned codec -- one restart interval per packet, with
or without the same Reed-Solomon FEC, and simple concealment of what is lost -- so the loss
sweeps compare like with like at equal total bytes. :mod:`~resilient_tx.eval.classical`
sweeps AVIF, WebP and JPEG over their quality settings, and
:mod:`~resilient_tx.eval.bdrate` computes the Bjontegaard delta rate between two
rate-quality curves.
"""
