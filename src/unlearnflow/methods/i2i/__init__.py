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

The stage :func:`unlearn_i2i` (rule ``unlearn_i2i``, generic over
``{method}``) loads the model folder and the sets, runs the method, and
writes the delta (only the changed tensors; encoder tensors only for the
encoder methods), the per-step trace and an info record.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from .loop import I2IContext  # noqa: F401  (the context every i2i method gets)

FAMILY = "i2i"


def unlearn_i2i(inp: dict, out: dict, params: dict) -> None:
    """Rule ``unlearn_i2i``: one method from the base model."""
    from ... import provenance
    from ...io import write_json, write_parquet
    from ...models.clip import resolve_device
    from ...models.i2i import load_i2i, load_images, model_fingerprint, parse_tasks
    from .. import get_method, save_delta

    if params.get("threads"):
        torch.set_num_threads(int(params["threads"]))
    method = params["method"]
    module = get_method(method, FAMILY)
    model_dir = Path(inp["config"]).parent
    model = load_i2i(model_dir, device=resolve_device(params.get("device", "auto")))
    method_params = dict(params.get("params") or {})
    retain_set = method_params.get("retain_set", getattr(module, "DEFAULTS", {}).get("retain_set", "retain"))
    ctx = I2IContext(
        model=model,
        forget=load_images(inp["forget"], model.image_size)[0],
        retain=load_images(inp["retain"], model.image_size)[0],
        tasks=parse_tasks(params["tasks"]),
        seed=int(params.get("seed", 0)),
        retain_set=retain_set,
    )
    t0 = time.time()
    result = module.run(ctx, method_params)
    seconds = time.time() - t0
    base = model_fingerprint(model_dir)
    prov = provenance.this_job(method=method, seed=ctx.seed, base_fingerprint=base)
    save_delta(out["delta"], result.tensors, method=method, base=base, provenance=prov)
    trace = result.trace if len(result.trace.columns) else pd.DataFrame({"step": []})
    write_parquet(out["trace"], trace)
    info = {"method": method, "family": FAMILY, "seconds": seconds, "base_fingerprint": base, **result.info, "provenance": prov}
    info["changed_tensors"] = sorted(result.tensors)
    write_json(out["info"], info)
    print(f"{method}: changed {len(result.tensors)} tensor(s) ({', '.join(info.get('changed_parts', []))}) in {seconds:.1f} s")
