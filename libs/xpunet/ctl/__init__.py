"""``xpunetctl``: the operator's command line (``up``, ``status``, ``demo``, ...).

Each subcommand is a module ``xpunet.ctl.<cmd>`` exposing ``add_parser(subparsers)``;
``xpunet.ctl.main`` lists them.
"""
