"""Memory-efficient kernels: ``torch.autograd.Function``s and the chunked/tiled loops behind
them (matrix losses with a closed-form gradient, tiled contrastive, linear + cross-entropy).
Kernels import neither :mod:`losslab.registry` nor :mod:`losslab.losses`; the registered
losses that use them live in their family modules."""
