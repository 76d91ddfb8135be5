"""Data checks run once per batch: a memo of the checks a tensor has passed, active in a block.

One training step gives the same batch tensor ``x`` to the guide's input check, the model's input
check and, with Pyro's validation on, the likelihood's support check in ``log_prob``; an evaluator
gives the same examples to every pass of particles. Inside :func:`checks_once` a boolean check
that passed for a tensor is not run again while the tensor is unchanged: the memo holds the tensor
itself and its version counter (which every in-place operation bumps, views included), so a
modified tensor is checked again. Outside the block nothing is remembered and every check runs.

The trainer enters the block around each shard of a step and each validation chunk
(:mod:`pyro_spvae.training.step`); the evaluators around each batch of examples
(:mod:`pyro_spvae.infer.log_likelihood`, :mod:`pyro_spvae.infer.spn_likelihood`). Checks that use the
memo: the finiteness check of :func:`pyro_spvae.validation.check_float_tensor` and
:func:`pyro_spvae.nn.bernoulli_likelihood.all_binary`. Like :mod:`pyro_spvae.validation`, this module
imports nothing from the rest of the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch

__all__ = ["checks_once", "passed_once"]

#: (check name, id of the tensor) -> (the tensor, its version, shape, stride) when it passed
_Memo = dict[tuple[str, int], tuple[torch.Tensor, int, tuple[int, ...], tuple[int, ...]]]
_MEMO: ContextVar[_Memo | None] = ContextVar("pyro_spvae_validation_memo", default=None)


@contextlib.contextmanager
def checks_once() -> Iterator[None]:
    """Remember the checks tensors pass inside this block (nested blocks share the outer memo);
    everything is forgotten on exit."""
    if _MEMO.get() is not None:
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _state(x: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    try:
        return x._version, tuple(x.shape), x.stride()
    except RuntimeError:  # inference-mode tensors have no version counter: never memoised
        return None


def passed_once(name: str, x: torch.Tensor, check: Callable[[torch.Tensor], bool]) -> bool:
    """``check(x)``, or ``True`` without running it when ``x`` passed the check ``name`` earlier in
    the current :func:`checks_once` block and has not changed since.

    :param name: names the check (one memo entry per check and tensor).
    :param check: a boolean test; only ``True`` results are remembered.
    """
    memo = _MEMO.get()
    if memo is None:
        return check(x)
    key = (name, id(x))
    state = _state(x)
    entry = memo.get(key)
    if entry is not None and entry[0] is x and state is not None and entry[1:] == state:
        return True
    ok = check(x)
    if ok and state is not None:
        memo[key] = (x, *state)
    return ok
