"""The lab: train and evaluate losses on real data, reproducibly (``losslab bench``).

* :mod:`losslab.lab.tasks` -- the task plug-in interface (:class:`~losslab.lab.tasks.base.Task`)
  and the tasks (``fewshot``, ...);
* :mod:`losslab.lab.runner` -- jobs, run folders, resume;
* :mod:`losslab.lab.results` -- the atomic ``results.jsonl``;
* :mod:`losslab.lab.report` -- ``table.md``, ``table.csv`` and plots from the JSONL;
* :mod:`losslab.lab.data`, :mod:`losslab.lab.backbones`, :mod:`losslab.lab.episodes`.

The lab needs the ``[lab]`` extra (matplotlib, tqdm, pillow); those are imported lazily, so
``import losslab`` needs only torch and numpy.
"""
