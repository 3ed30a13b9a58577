"""The one package that knows workload, method and clock together.

- :mod:`~sgdlab.run.config`: :class:`RunConfig` and its :class:`TrainConfig`, :class:`DistConfig`
  and :class:`HogwildRunConfig`, typed and checked;
- :mod:`~sgdlab.run.train`: one training run in this process (``sgdlab train``);
- :mod:`~sgdlab.run.rank`: the training every rank runs (``sgdlab dist``, ``torchrun``);
- :mod:`~sgdlab.run.dist`: the launcher's side of a distributed run;
- :mod:`~sgdlab.run.hogwild`: one Hogwild! run (``sgdlab hogwild``);
- :mod:`~sgdlab.run.finite`: the NaN and infinity checks both trainers use;
- :mod:`~sgdlab.run.store`, :mod:`~sgdlab.run.runfiles`: the results database and a run's folder.
"""
