"""Everything between files on disk and batches of tensors: decoding images (images), pairing LR with HR files and
naming their problems (pairs), finding a dataset's source and loading it (sources), the seeded train/val/test
splits (splits), the decoded store on disk (store), crops and augmentation (crops), LR made from HR (degrade),
DataLoaders (loaders), array<->tensor conversion (tensors) and the embedded demo data (demo).

It imports nothing of the model, training or the commands, so check-data, predict and the tests use it alone.
"""
