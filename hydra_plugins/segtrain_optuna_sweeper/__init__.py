"""Optuna sweeper for this project's ``train.py`` (``hparams_search=optuna``), on Optuna >= 4.

Why not hydra-optuna-sweeper: its release (1.3) pins ``optuna<3``, whose SQL storage fails with
SQLAlchemy 2, so studies lived in memory only; its 1.4 pre-release needs a pre-release Hydra and
still lacks pruning and a resume that re-runs interrupted trials. When an upstream release
supports current Optuna with both, switching back is a config change
(``hydra.sweeper._target_``) as long as it keeps the ``params`` grammar.

Lives in the repository next to ``train.py`` (Hydra finds plugins in the ``hydra_plugins``
namespace package on ``sys.path``; ``python train.py`` puts the repository first).
"""
