"""pyro_spvae.distributions"""

# Likelihood distributions on the 8-bit grid (nn.likelihoods builds on these).
from .binomial_grid import BinomialGrid as BinomialGrid
from .categorical_grid import CategoricalGrid as CategoricalGrid
from .discretized_logistic import DiscretizedLogistic as DiscretizedLogistic
from .grid import GridConstraint as GridConstraint
from .grid import grid_values as grid_values

# Sum-product networks (the parameter-holding module lives in pyro_spvae.spn).
from .spn import SumProductNetwork as SumProductNetwork
