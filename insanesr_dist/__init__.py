"""insanesr-dist: distributed training of InsaneSRNet for x4 super-resolution of gaming images."""

__version__ = "0.1.0"
