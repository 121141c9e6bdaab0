"""Data stage: from a source to prepared arrays.

Reads a Kaggle, Mendeley Data, MedMNIST or local archive (``sources``, ``download``, ``kaggle``, ``medmnist``,
``archive``), finds its images in the real layouts (``layouts``), splits them by patient (``splits``), decodes and
resizes them (``decode``, ``imaging``) and writes ``data/raw/<dataset>/source.json`` and
``data/prepared/<dataset>/{train,val,test}.{npy,csv}`` + ``info.json`` (``prepare``). Also: the demo's synthetic
archives in the real layouts (``synth``) and the ImageNet weights' download and check (``weights``).

Imports only the core.
"""
