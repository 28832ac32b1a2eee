"""The scaling-law interface shared by every functional form.

A law predicts log-loss from named inputs (N, D, E, ...) and a parameter vector theta. Every
law here is a log-sum-exp of additive terms, each term's log being linear in theta:

  log Lhat = log sum_k exp(t_k),   t_k = sum_p theta_p g_kp,

where g_kp is a constant or a feature of the data (e.g. -log N). This is the
parameterisation of Hoffmann et al. 2022 (approach 3): every parameter is unconstrained, the
prediction cannot overflow for any start of the grid (a = 25 means A = e^25), and the
gradient is cheap. A law is declared as data (its terms); prediction, its vector-Jacobian
product and the optimiser's preconditioning are derived from the declaration here, once.

Each term has one intercept: the parameter whose coefficient is a constant (log A for
A / N^alpha). ``preconditioner`` derives from the declaration an exact linear change of
variables for the optimiser (scale the features, fold their means into the
intercepts) that removes the strong intercept-exponent correlation (a and alpha move
together because log N ~ 20), so L-BFGS converges in far fewer iterations.

Axes: S rows of a batch of parameter vectors, R data rows (runs), P parameters.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Mapping, Sequence

import numpy as np

Features = Mapping[str, np.ndarray]
# Vector-Jacobian product of the log-prediction: cotangent [S, R] -> gradient [S, P].
VjpFn = Callable[[np.ndarray], np.ndarray]
# named parameter arrays (each [S]) -> named reported quantities (each [S])
ReportFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
FeaturesFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# One additive term: parameter name -> its coefficient, a constant or the name of a feature.
Term = Mapping[str, "float | str"]


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
  """A functional form L(inputs; theta), fitted on log-loss.

  Attributes:
    name: registry key, e.g. "chinchilla".
    formula: the law in the notation of its paper, for reports.
    citation: where the form comes from.
    param_names: names of the optimised parameters, in theta order. Scale parameters are
      optimised as their natural logs (Hoffmann et al.: a = log A).
    input_names: names of the inputs the law reads (columns mapped by the caller).
    features: validates raw inputs and returns the named features the terms refer to.
    terms: the additive terms of the loss, see the module docstring.
    init_grid: candidate starting values per parameter; the fit starts from their product.
    report: maps optimised parameters to the quantities reported in the paper's notation.
  """
  name: str
  formula: str
  citation: str
  param_names: tuple[str, ...]
  input_names: tuple[str, ...]
  features: FeaturesFn
  terms: tuple[Term, ...]
  init_grid: Mapping[str, Sequence[float]]
  report: ReportFn

  def __post_init__(self):
    for k, term in enumerate(self.terms):
      for name in term:
        self.index(name)
      if len(self._intercepts_of(term)) != 1:
        raise ValueError(f"term {k} of law {self.name!r} needs exactly one constant coefficient")
    intercepts = [self._intercepts_of(t)[0] for t in self.terms]
    features_of = {n for t in self.terms for n, g in t.items() if isinstance(g, str)}
    if len(set(intercepts)) != len(intercepts) or set(intercepts) & features_of:
      raise ValueError(f"law {self.name!r}: each intercept must belong to one term only")
    missing = set(self.param_names) - set(self.init_grid)
    if missing:
      raise ValueError(f"law {self.name!r}: no initialisation grid for {sorted(missing)}")

  @staticmethod
  def _intercepts_of(term: Term) -> list[str]:
    return [n for n, g in term.items() if not isinstance(g, str)]

  @property
  def num_params(self) -> int:
    return len(self.param_names)

  def index(self, name: str) -> int:
    """Position of parameter ``name`` in theta."""
    try:
      return self.param_names.index(name)
    except ValueError:
      raise KeyError(f"law {self.name!r} has no parameter {name!r}; "
                     f"parameters are {self.param_names}") from None

  def grid(self, fixed: Mapping[str, float] | None = None) -> np.ndarray:
    """The product of ``init_grid`` as an [S, P] array, fixed parameters pinned."""
    fixed = dict(fixed or {})
    axes = [(fixed[n],) if n in fixed else tuple(self.init_grid[n]) for n in self.param_names]
    return np.array(list(itertools.product(*axes)), dtype=np.float64)

  def named(self, theta_SP: np.ndarray) -> dict[str, np.ndarray]:
    """Splits a batch of theta rows into named parameter arrays."""
    theta_SP = np.atleast_2d(theta_SP)
    return {n: theta_SP[:, i] for i, n in enumerate(self.param_names)}

  def reported(self, theta_SP: np.ndarray) -> dict[str, np.ndarray]:
    """Reported quantities (paper notation) for a batch of theta rows."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
      return self.report(self.named(theta_SP))

  def _coefficient(self, g, feats: Features):
    return feats[g] if isinstance(g, str) else float(g)

  def log_predict(self, theta_SP: np.ndarray, feats: Features) -> tuple[np.ndarray, VjpFn]:
    """Batched log-prediction [S, R] and its vector-Jacobian product.

    A term may evaluate to -inf (a scale pinned to log 0 drops it: exp(-inf) = 0).
    """
    theta_SP = np.atleast_2d(theta_SP)
    coeffs = [[(self.index(n), self._coefficient(g, feats)) for n, g in term.items()]
              for term in self.terms]
    t_list = []
    for term in coeffs:
      t_SR = 0.0
      for p, g in term:
        t_SR = t_SR + theta_SP[:, p:p + 1] * g
      t_list.append(t_SR)
    return _log_sum_exp(t_list, coeffs, self.num_params)

  def preconditioner(self, feats: Features,
                     fixed: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Linear change of variables x = M theta for the optimiser, and M^-1 (exact blocks).

    * Exponents and other feature coefficients (free, non-intercept parameters q) are scaled
      by the standard deviation of their feature, x_q = sd(g_q) theta_q, so that a unit
      step in any x_q moves the log-prediction by about one unit. (Full whitening of the
      features was tried and led L-BFGS into worse local optima of the joint law.)
    * Intercepts: each free intercept absorbs its term's feature means,
      x_i = theta_i + sum_p theta_p mean(g_p) / c_i, removing the intercept-exponent
      correlation (a and alpha move together because log N ~ 20).
    Fixed parameters keep x_p = theta_p, and M^-1 is assembled from its blocks with exact
    zeros, so a fixed -inf intercept (a dropped term) maps to -inf and nothing else.
    A feature with (nearly) no variance in the data is left unscaled.
    """
    num = self.num_params
    intercepts = {self._intercepts_of(t)[0] for t in self.terms}
    feature_of = {}
    for term in self.terms:
      for n, g in term.items():
        if isinstance(g, str):
          feature_of.setdefault(n, g)
    q_names = [n for n in self.param_names
               if n in feature_of and n not in intercepts and n not in fixed]
    # Scaling block: x_q = sd_q theta_q.
    w_P = np.ones(num)
    for n in q_names:
      g = np.asarray(feats[feature_of[n]], np.float64)
      sd = float(np.std(g))
      if sd > 1e-8 * max(1.0, float(np.max(np.abs(g)))):
        w_P[self.index(n)] = sd
    w_PP, w_inv_PP = np.diag(w_P), np.diag(1.0 / w_P)
    # Centring block: x_i = theta_i + sum_p u_ip theta_p, theta_i = x_i - sum_p u_ip theta_p.
    u_PP = np.zeros((num, num))
    for term in self.terms:
      (icpt,) = self._intercepts_of(term)
      if icpt in fixed:
        continue
      i = self.index(icpt)
      for n, g in term.items():
        if isinstance(g, str):
          u_PP[i, self.index(n)] += float(np.mean(feats[g])) / float(term[icpt])
    # x = (I + U) theta on intercept rows, W theta elsewhere (U has no non-intercept rows and
    # no intercept columns; W is the identity on intercepts).
    m_PP = w_PP + u_PP
    minv_PP = w_inv_PP - u_PP @ w_inv_PP
    return m_PP, minv_PP


def _log_sum_exp(t_list, coeffs, num_params):
  """log(sum_k exp(t_k)) [S, R] and its VJP; ``coeffs[k]`` lists (param index, g) of term k.

  Terms without data features stay [S, 1] (one exp per row of theta, not per run). The
  max-shift of the usual log-sum-exp is omitted on purpose: every term is a loss component,
  so exp(t_k) overflows only for losses above e^709, and an overflow or total underflow
  makes the objective non-finite, which the line search rejects. This saves a pass over the
  [S, R] array per term, and exp is the cost of a fit.
  """
  if len(t_list) == 1:
    log_pred_SR = t_list[0]
    w_list, scale_SR = [1.0], 1.0
  else:
    w_list = [np.exp(t) for t in t_list]
    total_SR = w_list[0] + w_list[1]
    for w in w_list[2:]:
      total_SR += w
    log_pred_SR = np.log(total_SR)
    scale_SR = 1.0 / total_SR

  def vjp(cot_SR: np.ndarray) -> np.ndarray:
    # softmax weight of term k is w_k / total; fold 1 / total into the cotangent once.
    c_SR = cot_SR * scale_SR
    grad_SP = np.zeros((cot_SR.shape[0], num_params))
    for w_SR, term in zip(w_list, coeffs):
      cw_SR = c_SR * w_SR
      cw_sum_S = None
      for p, g in term:
        if isinstance(g, float):
          if cw_sum_S is None:
            cw_sum_S = cw_SR.sum(axis=1)
          grad_SP[:, p] += g * cw_sum_S
        else:
          grad_SP[:, p] += cw_SR @ g
    return grad_SP

  return log_pred_SR, vjp


def positive_log(values: np.ndarray, name: str) -> np.ndarray:
  """Natural log of an input that must be finite and positive (counts, tokens, FLOPs)."""
  values = np.asarray(values, dtype=np.float64)
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f"input {name!r} must be finite and > 0 to take its log")
  return np.log(values)
