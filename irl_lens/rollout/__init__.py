"""Closed-loop rollouts of a base action model, batched over many episodes.

:mod:`~irl_lens.rollout.engine` steps the model one position at a time with key/value
caches (equal to the full-sequence forward pass, tested) while a controller may rewrite
the residual stream at one layer; :mod:`~irl_lens.rollout.grid` and
:mod:`~irl_lens.rollout.ant` bind it to the gridworld and ant-pinpad environments.
"""
