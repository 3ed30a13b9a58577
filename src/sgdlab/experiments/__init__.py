"""The quick suite and each method's evidence (``sgdlab bench ...``). Nothing in the core imports
this package: an experiment uses :mod:`sgdlab.run` and :mod:`sgdlab.report` like a user would."""
