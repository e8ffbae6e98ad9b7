"""The `hftrain` command: answers `--help` and `--version` at once, hands everything else to the CLI.

Building the full command line means importing torch, Lightning, transformers and datasets (several
seconds on a laptop, more on a busy login node) to read every class signature. Asking what the command
does should not cost that, so the top-level help is written here and the heavy imports start only once a
subcommand runs. `hftrain fit --help` still shows every option, from the real parser.
"""

import sys

from hftrain import __version__

SUBCOMMANDS = {
    "fit": "Fine-tune a model; resume with --ckpt_path last.",
    "validate": "Compute validation metrics of a checkpoint (--ckpt_path best|last|<file>).",
    "test": "Compute test metrics of a checkpoint on data.test_file.",
    "predict": "Write predictions of a checkpoint on data.predict_file to predictions.jsonl.",
}

HELP = f"""usage: hftrain [-h] [--version] {{{",".join(SUBCOMMANDS)}}} ...

Fine-tune pretrained Hugging Face transformers with PyTorch Lightning.

subcommands (`hftrain <subcommand> --help` lists every option):
{"".join(f"  {name:<10}{text}{chr(10)}" for name, text in SUBCOMMANDS.items())}
examples:
  hftrain fit --config configs/quickstart.yaml
  hftrain fit --config configs/glue/mrpc.yaml --config configs/trainer/gpu.yaml
  hftrain test --config configs/glue/mrpc.yaml --ckpt_path best

options:
  -h, --help  show this help message and exit
  --version   print the version and exit
"""


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else [str(a) for a in args]
    if argv in (["-h"], ["--help"]):
        print(HELP, end="")
    elif argv == ["--version"]:
        print(f"hftrain {__version__}")
    elif not argv:
        print(HELP, end="", file=sys.stderr)
        raise SystemExit(2)
    else:
        from hftrain.cli import main as run

        run(args)
