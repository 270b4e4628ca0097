"""Reporting and timing tools, built on the library and used by the commands:

    leaderboard  plans, trains (through :func:`jlml_plugin.runner.train`) and reports a board
    report       a board's records as tables and plots
    stats        paired bootstrap intervals over identities
    sparsity     what the sparsity terms selected, per checkpoint and along a path
    timing       training, loop, loader and evaluator speed; profiles
    gpukit       every GPU check in one command (``jlml-bench gpu``)
"""
