"""Image-to-image unlearning: Li et al. (ICLR 2024) and its four baselines.

One module per method, registered under ``METHODS["i2i"]`` in
:mod:`unlearnflow.methods`, each ``run(ctx: I2IContext, params) ->
MethodResult``; the shared loop, losses and noise are in :mod:`.loop`.

| method           | trains   | forget term                                        |
| ---------------- | -------- | -------------------------------------------------- |
| ``li``           | encoder  | MSE(E(T(x_f)), E0(T(n))), n: noise images          |
| ``li_proxy``     | encoder  | the same, retain term on the proxy pool             |
| ``max_loss``     | full     | - MSE(G(T(x_f)), x_f)                              |
| ``noisy_label``  | full     | MSE(G(T(x_f)), n)                                  |
| ``retain_label`` | full     | MSE(G(T(x_f)), G0(T(x_r)))                         |
| ``random_encoder`` | encoder | MSE(E(T(x_f)), z), z ~ N(mean, std of E0(T(x_f)))  |

The stage :func:`unlearnflow.stages.i2i.unlearn_i2i` (rule ``unlearn_i2i``, generic
over ``{method}``) loads the model folder and the sets, runs the method, and
writes the delta (only the changed tensors; encoder tensors only for the
encoder methods), the per-step trace and an info record.
"""

from __future__ import annotations

from .loop import I2IContext  # noqa: F401  (the context every i2i method gets)
