"""Neural-network building blocks: MLP and convolutional encoders/decoders, stacked networks
(many small networks as one, for SPVAE's leaf VAEs) and likelihood heads."""

from .activations import ACTIVATIONS, get_activation
from .builders import ARCHS, HEADS, DenseDecoder, FlatMLPEncoder, SeparateHeads, build_decoder, build_encoder
from .code_posterior import CodePosteriorNet
from .conv import ConvDecoder, ConvEncoder, conv_spatial_sizes
from .gaussian_mixture_prior import GaussianMixturePrior
from .hierarchical_prior_net import HierarchicalPriorNet
from .leaf_likelihood import LEAF_LIKELIHOODS, LeafLikelihood
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    BinomialLikelihood,
    CategoricalLikelihood,
    GaussianLikelihood,
    Likelihood,
    LogisticLikelihood,
    make_likelihood,
)
from .mlp import INITS, MLP
from .reference_likelihoods import SqueezedBinomialGrid, precision_gaussian_log_lik, squeezed_count_log_pmf
from .stacked import StackedConvDecoder, StackedConvEncoder, StackedLinear, StackedMLP, conv_matrix, conv_taps
from .stacked_dense import StackedHeads

__all__ = [
    "INITS",
    "HEADS",
    "SeparateHeads",
    "StackedHeads",
    "LEAF_LIKELIHOODS",
    "LeafLikelihood",
    "SqueezedBinomialGrid",
    "precision_gaussian_log_lik",
    "squeezed_count_log_pmf",
    "CodePosteriorNet",
    "GaussianMixturePrior",
    "HierarchicalPriorNet",
    "ACTIVATIONS",
    "get_activation",
    "MLP",
    "ConvEncoder",
    "ARCHS",
    "FlatMLPEncoder",
    "DenseDecoder",
    "build_encoder",
    "build_decoder",
    "ConvDecoder",
    "conv_spatial_sizes",
    "StackedLinear",
    "StackedMLP",
    "StackedConvEncoder",
    "StackedConvDecoder",
    "conv_taps",
    "conv_matrix",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "BinomialLikelihood",
    "LogisticLikelihood",
    "CategoricalLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
]
