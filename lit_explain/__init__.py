"""lit_explain: explain what the neurons of vision networks detect, where, and why.

One Lightning framework for network dissection (NetDissect, Compositional and Clustered Compositional
Explanations), LaViSE and related concept methods. Entry point: ``python trainer_cli.py <subcommand> --config``.
"""

__version__ = "0.1.0"
