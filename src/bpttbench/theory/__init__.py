"""Theory for vanishing and exploding gradients in RNNs, to compare measurements with.

All functions are pure (no global state; the one Monte Carlo helper takes an explicit
seed), use numpy/scipy only, and natural logarithms throughout.

Contents
--------
1. ``mean_field``: mean-field theory of a random tanh (or linear / ReLU) RNN
   ``h_{t+1} = phi(W h_t + U x_t + b)``: the variance map, its fixed point q*, the
   mean-square Jacobian gain chi_1, the predicted rate 0.5 ln chi_1 of ln||delta|| per step
   and the critical sigma_w (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington &
   Schoenholz 2018).
2. ``random_matrices``: exact Lyapunov spectrum of products of i.i.d. Gaussian matrices (Newman 1986;
   Isopi & Newman 1992) and the identity sum_i lambda_i = E ln|det W|.
3. ``random_matrices``: tied (W^k) versus untied (W_k ... W_1) products: growth of the spread of ln||P v||.
4. ``gates``: norm bounds: Pascanu et al. (2013) for the vanilla RNN and the exact gate chains of an
   LSTM / GRU with W_hh = 0.
5. ``float_limits``: float32 overflow / underflow onset of an exponentially growing / decaying product.
6. ``tasks``: exact constant-predictor baselines of the adding and copy-memory tasks.

References
----------
* B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein, S. Ganguli, "Exponential
  expressivity in deep neural networks through transient chaos", NeurIPS 2016.
* S. S. Schoenholz, J. Gilmer, S. Ganguli, J. Sohl-Dickstein, "Deep information
  propagation", ICLR 2017.
* M. Chen, J. Pennington, S. S. Schoenholz, "Dynamical isometry and a mean field theory of
  RNNs: gating enables signal propagation in recurrent neural networks", ICML 2018.
* C. M. Newman, "The distribution of Lyapunov exponents: exact results for random
  matrices", Commun. Math. Phys. 103, 121-126 (1986).
* M. Isopi, C. M. Newman, "The triangle law for Lyapunov exponents of large random
  matrices", Commun. Math. Phys. 143, 591-598 (1992).
* H. Furstenberg, H. Kesten, "Products of random matrices", Ann. Math. Stat. 31 (1960)
  (law of large numbers and central limit theorem for ln||P_k v||).
* R. Pascanu, T. Mikolov, Y. Bengio, "On the difficulty of training recurrent neural
  networks", ICML 2013.
* M. Arjovsky, A. Shah, Y. Bengio, "Unitary evolution recurrent neural networks",
  ICML 2016 (adding and copy-memory task conventions).
"""

from __future__ import annotations

from .float_limits import (  # noqa: F401
    FLOAT32_MAX,
    FLOAT32_SMALLEST_SUBNORMAL,
    FLOAT32_TINY,
    LOG_FLOAT32_MAX,
    float32_overflow_lag,
    float32_underflow_lag,
)
from .gates import (  # noqa: F401
    gru_update_chain_log,
    log_sigmoid,
    lstm_forget_chain_log,
    pascanu_bound_log,
)
from .mean_field import (  # noqa: F401
    PHIS,
    chi1,
    chi1_at_q,
    critical_sigma_w,
    default_gauss_hermite_nodes,
    gauss_hermite_rule,
    gaussian_expectation,
    gradient_timescale,
    log_norm_rate,
    q_star,
    variance_map,
)
from .random_matrices import (  # noqa: F401
    gaussian_log_abs_det_mean,
    gaussian_log_abs_det_variance,
    gaussian_product_log_norm_mean_rate,
    gaussian_product_log_norm_variance_rate,
    ginibre_log_spectral_radius_moments,
    newman_lyapunov_spectrum,
    tied_product_log_norm_variance,
    untied_product_log_norm_variance,
)
from .tasks import (  # noqa: F401
    adding_problem_baseline_mse,
    copy_memory_baseline_xent,
)

__all__ = [
    "FLOAT32_MAX",
    "FLOAT32_TINY",
    "FLOAT32_SMALLEST_SUBNORMAL",
    "LOG_FLOAT32_MAX",
    "PHIS",
    "gauss_hermite_rule",
    "default_gauss_hermite_nodes",
    "gaussian_expectation",
    "variance_map",
    "q_star",
    "chi1_at_q",
    "chi1",
    "log_norm_rate",
    "gradient_timescale",
    "critical_sigma_w",
    "newman_lyapunov_spectrum",
    "gaussian_log_abs_det_mean",
    "gaussian_log_abs_det_variance",
    "gaussian_product_log_norm_mean_rate",
    "gaussian_product_log_norm_variance_rate",
    "untied_product_log_norm_variance",
    "tied_product_log_norm_variance",
    "ginibre_log_spectral_radius_moments",
    "pascanu_bound_log",
    "log_sigmoid",
    "lstm_forget_chain_log",
    "gru_update_chain_log",
    "float32_overflow_lag",
    "float32_underflow_lag",
    "adding_problem_baseline_mse",
    "copy_memory_baseline_xent",
]
