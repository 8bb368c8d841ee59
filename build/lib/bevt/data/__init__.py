"""Data: decoding only the frames a clip needs, the annotation formats users bring, clip-consistent
augmentations, resumable loaders, the built-in synthetic benchmark and `bevt data check`.

Importing this package loads nothing heavy; import the submodules (they need PyAV).
"""
