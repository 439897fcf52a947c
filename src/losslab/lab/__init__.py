"""The lab: train and evaluate losses on real data, reproducibly (``losslab bench``).

* :mod:`losslab.lab.tasks` -- the task plug-in interface (:class:`~losslab.lab.tasks.base.Task`)
  and the tasks (``fewshot``, ``noisy``, ``retrieval``), each data + model + fit + metrics;
* :mod:`losslab.lab.training` -- the one training loop (:func:`~losslab.lab.training.fit`);
* :mod:`losslab.lab.runner` -- jobs, run folders, resume, parallel workers;
  :mod:`losslab.lab.env` -- device and environment record; :mod:`losslab.lab.progress`;
* :mod:`losslab.lab.results` -- the atomic ``results.jsonl``;
* :mod:`losslab.lab.summary`, :mod:`losslab.lab.report`, :mod:`losslab.lab.plots` -- statistics,
  ``table.md``/``table.csv`` and the PNG figures, from the JSONL;
* :mod:`losslab.lab.data`, :mod:`losslab.lab.backbones`, :mod:`losslab.lab.noise`,
  :mod:`losslab.lab.episodes`, :mod:`losslab.lab.samplers` -- the building blocks of the tasks;
* :mod:`losslab.lab.demo` -- ``make demo``.

The lab needs the ``[lab]`` extra (matplotlib, tqdm, pillow); those are imported lazily, so
``import losslab`` needs only torch and numpy (and never imports the lab).
"""
