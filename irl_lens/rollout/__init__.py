"""Closed-loop rollouts of a base action model, batched over many episodes.

:mod:`~irl_lens.rollout.stepper` steps the model one position at a time with key/value
caches (equal to the full-sequence forward pass, tested); :mod:`~irl_lens.rollout.engine`
is the one episode loop over an env-adapter protocol, where a controller may rewrite the
residual stream at one layer; :mod:`~irl_lens.rollout.grid` and :mod:`~irl_lens.rollout.ant`
are the gridworld and ant-pinpad adapters (ant imports MuJoCo);
:mod:`~irl_lens.rollout.switchers` pick the controller at each step;
:mod:`~irl_lens.rollout.kit` picks engine, envs, switcher and expert by the model's
environment; and :mod:`~irl_lens.rollout.relabel` labels closed-loop episodes with the
expert's actions (DAgger). Imports point one way:
``relabel -> kit -> grid, ant, switchers -> engine -> stepper``.
"""
