"""The coefficient rules: estimator x weighting -> the per-row coefficients of the one objective
(csrc/objective.h, THEORY.md §4.1, §12.6). One pure function per estimator,

    rule(s: Setting, row: dict, batch: Batch, n: int) -> (coef [n, ROW_FIELDS], form, extra)

with `extra` what the form reads besides the coefficients (psi, noise, u_old, anchor_current).
`RULES` maps an estimator name to its rule; the zeroth-order rule weighs its terms by the
preset's `reweight` through `REWEIGHTS`, the velocity rule by `ETAS`. rsm.Trainer hands every
training row to RULES[estimator]; rsm.methods.influence reads the same rules on synthetic rows."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import conventions as _conv
from ..objective import row_coefficients
from .presets import Preset
from .setting import Setting

PCPO_ZETA = 4.3152134639895925  # PCPO's flow reweighting constant (THEORY.md §6.3.7)

Rule = Callable[[Setting, dict, Any, int], "tuple[np.ndarray, str, dict]"]


def _weights(s: Setting, row: dict, batch: Any) -> tuple[dict, float, np.ndarray]:
    """(the step's sampler coefficients, w = |K| / std, the row's validity x row weight)."""
    c = s.sde[row["step"]]
    std = c["std"]
    # a deterministic last step (VP into t = 0: std = 0) has no density and is never a
    # zeroth-order row; first-order rows only use w for the KL report
    w = abs(c["K"]) / std if std > 0 else 0.0
    # tree rollouts: rows are nodes, with their own validity (any valid leaf below)
    valid = batch.get("row_valid", batch["valid"])[row["traj"]].astype(np.float64)
    return c, w, valid * row["weight"]


# ---- pathwise -------------------------------------------------------------------------------
def refl(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """ReFL: L = -lambda mean r(x0_hat(u)); at the current outputs its cotangent is
    -lambda (d x0_hat / du) g / n, written as the RSM loss (1/2)|u - (sg(u) + Psi)|^2 with
    Psi = lambda (d x0_hat / du) g in output units (conv = 1; the gamma -> inf pathwise limit of
    THEORY.md §6.3.11): its gradient at u = sg(u) is -Psi."""
    c, w, weight = _weights(s, row, batch)
    p_u = float(np.from_dlpack(s.path.x0_hat(np.zeros((1, 1)), np.ones((1, 1)),
                                             np.full(1, c["t"])))[0, 0])
    psi = (s.cfg["reward_scale"] * p_u * batch["grad"][row["traj"]]).astype(s.dtype)
    # the released hinge relu(h - r) (reward_hinge): samples at or above h carry no gradient
    # but stay in the batch mean (influence()'s synthetic rows have no rewards)
    rewards = batch.get("rewards")
    if rewards is not None:
        weight = weight * _conv.hinge_active(s.cfg, rewards[row["traj"]])
    coef = row_coefficients(n, conv=1.0, c1=0.5, gamma=1.0, w=w, weight=weight)
    return coef, "score_matching", {"psi": psi, "anchor_current": True}


# ---- first order ----------------------------------------------------------------------------
ETAS: dict[str, Callable[[float], float]] = {   # the velocity rule's time weighting eta(t)
    "linear": lambda t: (1 - t),
    "quad": lambda t: (1 - t) ** 2,
}


def fo_velocity(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """fo-terminal (g = grad r(x0) reused at every t) and fo-tweedie (g at the row's Tweedie
    point): velocity regression written as the RSM loss with conv = 1 (the score difference
    scaled into velocity units, THEORY.md §5 L6): C1 = 1, gamma Psi = -lambda eta(t) g."""
    c, w, weight = _weights(s, row, batch)
    eta = ETAS[s.cfg["eta"]](c["t"])
    g = (batch["grad_rows"][row["index"]] if s.cfg["estimator"] == "fo-tweedie"
         else batch["grad"][row["traj"]])
    psi = (-s.cfg["reward_scale"] * eta * g).astype(s.dtype)
    coef = row_coefficients(n, conv=1.0, c1=1.0, gamma=1.0, kl=0.0, w=w, weight=weight)
    return coef, "score_matching", {"psi": psi}


def fo_residual(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """Forward residual (THEORY.md §6.3.3, §12.5): R = kappa (mu - mu_ref)/std^2 - lambda a g with
    mu - mu_ref = K (eps - eps_ref):
      |R|^2 = (kappa K/std^2)^2 |d eps - lambda a std^2/(kappa K) g|^2,
    plus reg |eps - eps_old|^2 = C1 C2 |.|^2 (the trust region toward theta_old).
    Residual nabla-DB: kappa = 1, a = alpha_bar(t'), g at the next state (fo-next);
    the redesign: kappa = a = std, g = grad r(x0) at the rollout's end (fo-residual)."""
    cfg = s.cfg
    c, w, weight = _weights(s, row, batch)
    K, std = c["K"], c["std"]
    kappa = std if cfg.get("kappa", "sigma") == "sigma" else 1.0
    if cfg.get("adaptive", "sigma") == "sigma":
        a_t = std
    else:  # "alpha_bar_next": alpha_bar(t') = alpha(t')^2 of the VP path
        a_t = s.path.coef(c["t_next"])["alpha"] ** 2
    c1 = (kappa * K / std**2) ** 2
    g = (batch["grad_rows"][row["index"]] if cfg["estimator"] == "fo-next"
         else batch["grad"][row["traj"]])
    psi = (cfg["reward_scale"] * a_t * std**2 / (kappa * K) * g).astype(s.dtype)
    coef = row_coefficients(n, conv=1.0, c1=c1, gamma=1.0, c2=cfg["reg"] / c1, w=w, weight=weight)
    return coef, "score_matching", {"psi": psi, "u_old": row["u_old"]}


def fo_soft_q(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """SQDF (THEORY.md §6.3.2): per row alpha KL_i - gamma_d Q(x'), x' = mu_theta + std z, gradient
    [alpha dKL/dmu - gamma_d grad Q(x')] dmu/dtheta, with mu - mu_ref = K (u - u_ref). Written as
    C1 mean_d |u - u_ref - Psi|^2 (the preset's mean over dimensions), whose u-gradient is
    (2 C1 / D) (u - u_ref - Psi):
      KL = mean_d |mu - mu_ref|^2 / std^2 (kl_denominator "std2", the released sd_pipeline.py)
           or / (2 std^2) ("exact"):  C1 = alpha K^2 / std^2 (or / (2 std^2));
      the reward term's u-gradient -gamma_d K g whole (reward_reduce "sum": Q is one scalar per
           sample, the released loss) or divided by D ("mean", rsm's earlier per-element mean):
           Psi = gamma_d K g D / (2 C1) (or without D)."""
    cfg = s.cfg
    c, w, weight = _weights(s, row, batch)
    K, std, alpha = c["K"], c["std"], cfg["alpha"]
    discount = cfg["discount"] ** (len(s.ts) - 2 - row["step"])
    g = batch["grad_rows"][row["index"]]
    c1 = alpha * K**2 / std**2 * (1.0 if cfg.get("kl_denominator", "exact") == "std2" else 0.5)
    dims = g.shape[1] if cfg.get("reward_reduce", "mean") == "sum" else 1
    psi = (discount * cfg["reward_scale"] * K * dims / (2 * c1) * g).astype(s.dtype)
    coef = row_coefficients(n, conv=1.0, c1=c1, gamma=1.0, w=w, weight=weight)
    return coef, "score_matching", {"psi": psi}


def fo_next(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """FO-next (g at the row's sampled next state, THEORY.md §7.1): SQDF's soft-Q loss when the
    preset has a `discount`, else the forward residual of Residual nabla-DB."""
    return (fo_soft_q if "discount" in s.cfg else fo_residual)(s, row, batch, n)


def fo_adjoint(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """Adjoint Matching, Psi = a~ the lean adjoint of r/alpha (rsm.methods.pathwise).
    am_loss "released" (microsoft/soc-fine-tuning-sd am_trainer.py): per trained step
    |(mu - mu_ref)/std + std a|^2 with a = -a~, i.e. (K/std)^2 |u - u_ref - std^2 a~ / K|^2 in
    the sampler's own output (conv = 1), any Gaussian-step sampler; on the memoryless flow SDE
    (K = 2 dt, std^2 = g^2 |dt|) it is |dt| times the "rsm" form. am_loss "rsm": |s_theta -
    (s_ref + a~)|^2 with C1 = g(t)^2 = 2t/(1-t) (the memoryless noise), v = conv s + (x terms),
    conv = -t/(1-t)."""
    c, w, weight = _weights(s, row, batch)
    # am_adjoint "next": the adjoint at the step's next state, a~_{i+1}, whose conditional mean
    # under the tilted chain is (mu* - mu_ref) / std^2 exactly (Stein's identity for the step's
    # Gaussian tilted by h_{i+1}); "state": a~_i = J_i^T a~_{i+1}, the release's and the paper's
    step = row["step"] + (1 if s.cfg.get("am_adjoint", "state") == "next" else 0)
    adjoint = batch["adjoint"][step][row["traj"]]
    if s.cfg.get("am_loss", "rsm") == "released":
        K, std = c["K"], c["std"]
        psi = (std**2 / K * adjoint).astype(s.dtype)
        coef = row_coefficients(n, conv=1.0, c1=(K / std) ** 2, gamma=1.0, w=w, weight=weight)
        return coef, "score_matching", {"psi": psi}
    t = c["t"]
    conv = -t / (1 - t)
    psi = adjoint.astype(s.dtype)
    coef = row_coefficients(n, conv=conv, c1=2 * t / (1 - t), gamma=1.0, w=w, weight=weight)
    return coef, "score_matching", {"psi": psi}


# ---- zeroth order ---------------------------------------------------------------------------
# A weighting: (cfg, step coefficients c, w, sigma_tilde) -> (w, term_scale, post, ratio_scale)
def _base(cfg: Preset, c: dict, w: float, st: float) -> tuple:
    return w, 1.0, 1.0, 1.0


def _fairclip2(cfg: Preset, c: dict, w: float, st: float) -> tuple:   # THEORY.md §9.2.3
    dt = c["dt"]
    return w, st**2 * dt, st / (np.sqrt(dt) * st**2 * dt), st**2 * dt


def _fairclip(cfg: Preset, c: dict, w: float, st: float) -> tuple:
    dt = c["dt"]
    return w, st**2 * dt, 1.0 / (st**2 * dt), st**2 * dt


def _tempflow(cfg: Preset, c: dict, w: float, st: float) -> tuple:
    term_scale = 2.25 * st * np.sqrt(c["dt"])
    if cfg["form"] == "matching":
        return w, term_scale, 1.0, 1.0
    return w, 1.0, term_scale, 1.0


def _log_ratio_weight(cfg: Preset, w: float, w_prime: float) -> tuple:
    """PCPO's log-ratio weight w': the matching form's w itself, the ratio forms' rescaling."""
    if cfg["form"] == "matching":
        return w_prime, 1.0, 1.0, 1.0
    return w, 1.0, 1.0, w_prime / w


def _pcpo(cfg: Preset, c: dict, w: float, st: float) -> tuple:   # w' = zeta dt (§6.3.7)
    return _log_ratio_weight(cfg, w, PCPO_ZETA * c["dt"])


def _constant(cfg: Preset, c: dict, w: float, st: float) -> tuple:   # PCPO diffusion (§6.3.6)
    return _log_ratio_weight(cfg, w, cfg["loss_weight"])


def _guard(cfg: Preset, c: dict, w: float, st: float) -> tuple:
    """GRPO-Guard: RatioNorm (linear part, x std) and 1/dt."""
    dt = c["dt"]
    if cfg["form"] == "matching":
        return w, st * np.sqrt(dt), 1.0 / dt, 1.0
    return w, 1.0, 1.0 / dt, c["std"]


REWEIGHTS: dict[str, Callable[..., tuple]] = {
    "base": _base, "fairclip2": _fairclip2, "fairclip": _fairclip, "tempflow": _tempflow,
    "pcpo": _pcpo, "constant": _constant, "guard": _guard,
}


def zeroth_order(s: Setting, row: dict, batch: Any, n: int) -> tuple[np.ndarray, str, dict]:
    """zo-group / zo-branch / zo-tree: group advantages times the injected noise through the
    PPO / log-ratio / matching forms, weighed per step by the preset's `reweight`."""
    cfg = s.cfg
    c, w, weight = _weights(s, row, batch)
    # rows without signal (zero-std group) keep A = 0: no policy gradient, but their KL
    # anchor still counts (zero_std "mask"); rows with an invalid reward are dropped entirely,
    # and so are the no-signal rows with zero_std "drop" (Flow-GRPO: the sample leaves the batch)
    mask = batch["mask"][row["traj"]].astype(np.float64)
    if cfg.get("zero_std", "mask") == "drop":
        weight = weight * mask
    adv = batch["adv"][row["traj"]] * mask
    reweight = REWEIGHTS[cfg.get("reweight", "base")]   # the names: presets.REWEIGHT_NAMES
    w, term_scale, post, ratio_scale = reweight(cfg, c, w, c["std"] / np.sqrt(c["dt"]))
    w_kl = abs(c["K"]) / c["std"]   # the KL anchor always uses the sampler's true weight
    coef = row_coefficients(n, adv=adv, w=w, ratio_scale=ratio_scale, term_scale=term_scale,
                            post=post, clip_eps=cfg["clip_eps"],
                            kl=cfg["kl"] * _conv.kl_factor(cfg, c["dt"]), w_kl=w_kl, weight=weight)
    return coef, cfg["form"], {"noise": row["noise"], "u_old": row["u_old"]}


RULES: dict[str, Rule] = {
    "zo-group": zeroth_order, "zo-branch": zeroth_order, "zo-tree": zeroth_order,
    "fo-terminal": fo_velocity, "fo-tweedie": fo_velocity, "fo-residual": fo_residual,
    "fo-next": fo_next, "fo-adjoint": fo_adjoint, "refl": refl,
}


# ---- KL-anchor rows (branch rollouts, THEORY.md §9.2.5, §9.3) ---------------------------------
def anchor_beta(cfg: Preset) -> float:
    """The KL-anchor rows' beta: kl_anchor, or the preset's kl when kl_anchor is None."""
    beta = cfg.get("kl_anchor", 0.0)
    return float(cfg["kl"] if beta is None else beta)


def anchor_kl_weight(s: Setting, step: int) -> float:
    """w of a KL-anchor row at `step`: the sampler's |K| / std, or the preset's constant."""
    w = s.cfg.get("kl_anchor_weight", "sampler")
    c = s.sde[step]
    return abs(c["K"]) / c["std"] if w == "sampler" else float(w)


def kl_anchor(s: Setting, row: dict, batch: Any, n: int, normalizer: float,
              n_batches: int) -> tuple[np.ndarray, str, dict]:
    """A KL-anchor row: no policy term (C1 = 0), only beta (w^2 / 2) mean|u - u_ref|^2, per row
    weight k_avg ("k_avg": the row counts in the masked mean like a trained transition) or
    normalizer / (anchor rows x micro-batches) ("mean": beta times the micro-batch's mean over
    its anchor rows, micro-batches averaged)."""
    w = anchor_kl_weight(s, row["step"])
    if s.cfg.get("kl_anchor_reduce", "k_avg") == "mean":
        count = sum(len(r["x"]) for r in batch["anchor_rows"])
        weight = normalizer / (count * n_batches)
    else:
        weight = row["weight"]
    coef = row_coefficients(n, c1=0.0, kl=anchor_beta(s.cfg), w=w, w_kl=w, weight=weight)
    return coef, "score_matching", {}
