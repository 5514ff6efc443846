"""Training layer: everything that produces model and prior files, above the codec, zoo and
model layers and used only by the command line. :mod:`~resilient_tx.training.trainer` trains
the PQ-VAE and its MIM entropy model jointly (then the MIM alone on frozen tokens);
:mod:`~resilient_tx.training.token_train` trains on the frozen tokens of an existing model,
continuing its MIM or fitting the AR inpainting prior; all of these phases run the one loop
of :mod:`~resilient_tx.training.loop` (warmup + cosine schedule, wall-clock budget, CSV log,
resumable checkpoints), draw their data from :mod:`~resilient_tx.training.crops`, and write
their results through :mod:`resilient_tx.zoo.checkpoint`. How fast they run (bf16 autocast,
channels-last, on-device data, ``torch.compile``, fused AdamW) is set by
:mod:`~resilient_tx.training.efficiency`; under ``torchrun`` they run data-parallel through
:mod:`~resilient_tx.training.distributed`. :mod:`~resilient_tx.training.kmeans` derives
smaller-codebook rate points from a trained model without any training.
"""
