"""detrkit.cli: the `detrkit` command line (also `python -m detrkit`).

dispatch.py       `detrkit COMMAND [ARGS]`: the command table and `main` (the console script's entry point)
runner.py         `run_command`: how each command runs (user errors -> one line and exit status 2, `--debug`)
options.py        the options several commands share (`--trust-remote-code [BOOL]`, `--device`, hidden old spellings)
device_option.py  `--device` (cpu, cuda, cuda:N, mps): checked by spelling for --help, resolved with torch when run

Each command is a module with `main(argv) -> int | None` in the package it belongs to (training.train,
inference.evaluate_command, inference.predict_command, data.check, conversion.convert_command, deploy.*).
"""
