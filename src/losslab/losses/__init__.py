"""Loss families. Importing this package registers every loss.

One module per family; each loss keeps its function, its ``nn.Module`` shell and its registry
entry together in its family module.
"""

from losslab.losses import fewshot, metric, mixup, proxy, regularizers  # noqa: F401
