"""Small C kernels for the CPU (decode attention, fused per-layer operations), built on first use.

Everything here has a PyTorch equivalent in layers/ and attention/ that runs where no C compiler exists.
"""
