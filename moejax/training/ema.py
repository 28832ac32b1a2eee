"""An exponential moving average of the parameters, kept inside the optimizer state.

``with_param_ema(tx, decay)`` chains an optax transformation whose state holds
ema <- decay * ema + (1 - decay) * params_after_update after every step (initialised to the
initial parameters; DiT and DiT-MoE evaluate and sample with EMA 0.9999 weights). Living in
``TrainState.opt_state``, the average is sharded like the parameters, checkpointed and resumed
with them, so a resumed run reproduces the EMA bit for bit. ``ema_params(opt_state)`` finds it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax


class ParamEmaState(NamedTuple):
  ema: Any  # mirrors the parameters


def param_ema(decay: float) -> optax.GradientTransformation:
  """Passes updates through unchanged and tracks the EMA of ``params + updates``: put it last
  in a chain, after the transformation that produces the final updates."""
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"ema decay={decay} must be in [0, 1)")

  def init(params):
    return ParamEmaState(ema=jax.tree.map(lambda p: p, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("param_ema needs the parameters (tx.update(grads, state, params))")
    new_params = optax.apply_updates(params, updates)
    return updates, ParamEmaState(
        ema=optax.tree_utils.tree_update_moment(new_params, state.ema, decay, 1))

  return optax.GradientTransformation(init, update)


def with_param_ema(tx: optax.GradientTransformation,
                   decay: float | None) -> optax.GradientTransformation:
  """``tx`` followed by ``param_ema(decay)``; ``tx`` itself when ``decay`` is None."""
  return tx if decay is None else optax.chain(tx, param_ema(decay))


def ema_params(opt_state):
  """The EMA parameters held in an optimizer state, or None without ``param_ema``."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, ParamEmaState))
           if isinstance(s, ParamEmaState)]
  return found[0].ema if found else None
