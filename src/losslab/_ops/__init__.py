"""Shared loss math used by several families: logits batches (``logits``), pair batches and
label masks (``pairs``), numerics. Imports only ``losslab._core`` and ``losslab.distances``;
never a family module, the registry or a kernel."""
