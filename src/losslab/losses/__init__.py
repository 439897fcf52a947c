"""Loss families. Importing this package registers every loss.

One module per family; each loss keeps its function, its ``nn.Module`` shell and its registry
entry together in its family module.
"""

from losslab.losses import anyloss, classification, fewshot, robust  # noqa: F401
