"""Shared loss math used by several families. Imports only ``losslab._core``,
``losslab._hparams``, ``losslab.distances`` and other ``_ops`` modules; never a family module,
the registry or a kernel.

* ``logits``: the ``(logits, target)`` batch (class ids or soft targets, ignore_index).
* ``dense``: the dense-prediction batch and the per-class soft counts of region losses.
* ``pairs``: pair batches, label masks, miner tuples of the ``embeddings`` kind.
* ``logsumexp``: the log-sum-exp family with fixed or data shifts.
* ``numerics``: ``safe_pow`` and other guarded elementwise math.
* ``paired``, ``teacher``: validation of ``(a, b)`` and ``(student, teacher)`` inputs.
* ``icnn``: the ICNN score shared by the few-shot loss and the metric.
"""
