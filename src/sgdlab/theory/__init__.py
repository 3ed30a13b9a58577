"""How fast SGD must converge: pure functions returning small dataclasses, each beside the
reference it is checked against (numpy and cvxpy; never torch).

- :mod:`~sgdlab.theory.sgd_bounds`: SGD and Hogwild! without bounded gradients (Nguyen et
  al., ICML 2018): the diminishing and constant step bounds and their exact recursions;
- :mod:`~sgdlab.theory.biased_sgd`: biased SGD by stochastic quadratic constraints and a small
  LMI, and sequential step-size selection (Hu, Seiler, Lessard).

Import the module you need: :mod:`~sgdlab.theory.biased_sgd` loads cvxpy, which the bounds
of :mod:`~sgdlab.theory.sgd_bounds` do not need.
"""
