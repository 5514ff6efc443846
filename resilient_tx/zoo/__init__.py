"""The model zoo: model files, their ids, and lookup of the shipped rate points.

A codec model is a ``torch.save`` file of weights, config and stage-1 marginals whose
8-byte model id is a hash of its content (:mod:`~resilient_tx.zoo.checkpoint`, which also
reads the AR inpainting priors bound to a model's id); every bitstream carries that id, so
a receiver finds the model that made it. Trained models ship as package data in
``resilient_tx/models/``; the k-means rate points derived from them ship in
``models/derived/`` as small files that reference their base by name and id
(:mod:`~resilient_tx.zoo.derived`) and have ids of their own. :mod:`~resilient_tx.zoo.registry`
looks both kinds up by rate name, file path or model id.
"""
