"""One module per op family: fake kernels, the autograd.Function, the functional wrapper."""
