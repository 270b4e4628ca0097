"""The commands: each module parses one command's arguments, calls the library or a tool,
and prints. Nothing below imports from here.

    train        jlml-train        (python -m jlml_plugin.cli.train, for torchrun)
    leaderboard  jlml-leaderboard
    bench        jlml-bench
    sparsity     jlml-sparsity
    export       jlml-export
    common       one-line errors and ``--debug``, shared by all
"""
