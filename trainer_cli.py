"""Command line entry point: ``python trainer_cli.py fit|validate|test|predict --config configs/<x>.yaml``."""

from lit_explain.cli import main

if __name__ == "__main__":  # guard required: ddp_spawn re-imports __main__ in each child
    main()
