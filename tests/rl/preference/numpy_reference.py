"""Independent numpy formulas of every preference loss (written from the papers and
TRL's documented formulas, not from rl.preference), for the family tests.

Each entry: ``f(pc, pr, rc, rr, lc, lr, beta, ls, **options) -> [B]`` in float64, with
``lc``/``lr`` the completion token counts as given (no clamping).
"""

import numpy as np


def log_sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, -np.log1p(np.exp(-x)), x - np.log1p(np.exp(x)))


def sigmoid(x):
    return np.exp(log_sigmoid(x))


def _sigmoid(pc, pr, rc, rr, lc, lr, beta, ls):
    logits = (pc - pr) - (rc - rr)
    return -(1 - ls) * log_sigmoid(beta * logits) - ls * log_sigmoid(-beta * logits)


def _hinge(pc, pr, rc, rr, lc, lr, beta, ls):
    return np.maximum(0.0, 1.0 - beta * ((pc - pr) - (rc - rr)))


def _ipo(pc, pr, rc, rr, lc, lr, beta, ls, ipo_normalize=True):
    if ipo_normalize:
        d = (pc - rc) / lc - (pr - rr) / lr
    else:
        d = (pc - pr) - (rc - rr)
    return (d - 1.0 / (2.0 * beta)) ** 2


def _exo_pair(pc, pr, rc, rr, lc, lr, beta, ls):
    eps = ls  # TRL 1.x: label_smoothing must be in (0, 1); 0 is refused
    z = beta * ((pc - pr) - (rc - rr))
    p_w, p_l = sigmoid(z), sigmoid(-z)
    # KL((p_w, p_l) || (1 - eps, eps))
    return p_w * (np.log(p_w) - np.log(1 - eps)) + p_l * (np.log(p_l) - np.log(eps))


def _nca_pair(pc, pr, rc, rr, lc, lr, beta, ls):
    a, b = beta * (pc - rc), beta * (pr - rr)
    return -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-b)


def _robust(pc, pr, rc, rr, lc, lr, beta, ls):
    z = beta * ((pc - pr) - (rc - rr))
    return (-(1 - ls) * log_sigmoid(z) + ls * log_sigmoid(-z)) / (1 - 2 * ls)


def _bco_pair(pc, pr, rc, rr, lc, lr, beta, ls, bco_delta=0.0):
    return (-log_sigmoid(beta * (pc - rc) - bco_delta)
            - log_sigmoid(-(beta * (pr - rr) - bco_delta)))


def _sppo_hard(pc, pr, rc, rr, lc, lr, beta, ls):
    return (pc - rc - 1 / (2 * beta)) ** 2 + (pr - rr + 1 / (2 * beta)) ** 2


def _aot(pc, pr, rc, rr, lc, lr, beta, ls):
    d = np.sort(pc - pr) - np.sort(rc - rr)
    return -(1 - ls) * log_sigmoid(beta * d) - ls * log_sigmoid(-beta * d)


def _aot_unpaired(pc, pr, rc, rr, lc, lr, beta, ls):
    d = np.sort(pc - rc) - np.sort(pr - rr)
    return -(1 - ls) * log_sigmoid(beta * d) - ls * log_sigmoid(-beta * d)


def _apo_zero(pc, pr, rc, rr, lc, lr, beta, ls):
    return 1 - sigmoid(beta * (pc - rc)) + sigmoid(beta * (pr - rr))


def _apo_down(pc, pr, rc, rr, lc, lr, beta, ls):
    return sigmoid(beta * (pc - rc)) + 1 - sigmoid(beta * ((pc - rc) - (pr - rr)))


def _discopop(pc, pr, rc, rr, lc, lr, beta, ls, discopop_tau=0.05):
    z = beta * ((pc - pr) - (rc - rr))
    m = sigmoid(z / discopop_tau)
    return -log_sigmoid(z) * (1 - m) + np.exp(-z) * m


def token_mean_nll(pc, lc):
    """TRL 1.x's token-mean cross-entropy of the chosen completions: real tokens only, so
    a zero-length completion adds 0 tokens (a batch without tokens gives 0)."""
    return -pc.sum() / max(lc.sum(), 1.0)


def _sft(pc, pr, rc, rr, lc, lr, beta, ls):
    return np.full(pc.shape, token_mean_nll(pc, lc))


def _sigmoid_norm(pc, pr, rc, rr, lc, lr, beta, ls):
    return -log_sigmoid(beta * ((pc - rc) / lc - (pr - rr) / lr))


def _simpo(pc, pr, rc, rr, lc, lr, beta, ls, simpo_gamma=0.5):
    z = beta * (pc / lc - pr / lr) - simpo_gamma
    return -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z)


def _cpo(pc, pr, rc, rr, lc, lr, beta, ls, cpo_alpha=1.0):
    z = beta * (pc - pr)
    nll = token_mean_nll(pc, lc)
    return -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z) + cpo_alpha * nll


def _orpo(pc, pr, rc, rr, lc, lr, beta, ls):
    w, lo = pc / lc, pr / lr
    log_odds = (w - np.log(1 - np.exp(w))) - (lo - np.log(1 - np.exp(lo)))
    return token_mean_nll(pc, lc) - beta * log_sigmoid(log_odds)


def _kto_pair(pc, pr, rc, rr, lc, lr, beta, ls, desirable_weight=1.0,
              undesirable_weight=1.0):
    kl_w = max(np.mean(pc - rc), 0.0)
    kl_l = max(np.mean(pr - rr), 0.0)
    good = 1 - sigmoid(beta * ((pc - rc) - kl_l))
    bad = 1 - sigmoid(beta * (kl_w - (pr - rr)))
    # TRL averages the 2B concatenated terms; per pair that is half their sum
    return 0.5 * (desirable_weight * good + undesirable_weight * bad)


REFERENCE = {
    "sigmoid": _sigmoid, "hinge": _hinge, "ipo": _ipo, "exo_pair": _exo_pair,
    "nca_pair": _nca_pair, "robust": _robust, "bco_pair": _bco_pair, "sppo_hard": _sppo_hard,
    "aot": _aot, "aot_unpaired": _aot_unpaired, "apo_zero": _apo_zero, "apo_down": _apo_down,
    "discopop": _discopop, "sft": _sft, "sigmoid_norm": _sigmoid_norm, "simpo": _simpo,
    "cpo": _cpo, "orpo": _orpo, "kto_pair": _kto_pair,
}

# The label smoothing of the shared checks: 0 except where a loss refuses 0.
LABEL_SMOOTHING = {"exo_pair": 1e-3}

# Non-default options checked for the losses that take them.
OPTION_VARIANTS = {
    "ipo": {"ipo_normalize": False},
    "bco_pair": {"bco_delta": 0.3},
    "discopop": {"discopop_tau": 0.5},
    "simpo": {"simpo_gamma": 1.2},
    "cpo": {"cpo_alpha": 0.25},
    "kto_pair": {"desirable_weight": 1.5, "undesirable_weight": 0.5},
}
