"""Loss families. Importing this package registers every loss.

One module per family; each loss keeps its function, its ``nn.Module`` shell and its registry
entry together in its family module. One import line per family module.
"""

from losslab.losses import (
    aggregate,  # noqa: F401
    anyloss,  # noqa: F401
    classification,  # noqa: F401
    contrastive,  # noqa: F401
    fewshot,  # noqa: F401
    robust,  # noqa: F401
)
