"""Loss families. Importing this package registers every loss.

One module per family; each loss keeps its function, its ``nn.Module`` shell and its registry
entry together in its family module.
"""

from losslab.fused import linear_cross_entropy  # noqa: F401
from losslab.losses import fewshot  # noqa: F401
