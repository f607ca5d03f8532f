"""Entry point: ``veriprint SUBCOMMAND ...``.

Each subcommand lives in ``veriprint.cli.<name>`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Heavy imports happen
inside ``run`` so that ``veriprint --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

SUBCOMMANDS = ("fingerprint", "verify", "inspect", "keygen", "demo", "generate", "tamper", "evaluate",
               "monitor")


def _available() -> list[str]:
    names = []
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"veriprint.cli.{name}") is not None:
            names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veriprint",
        description="Sensitive-sample fingerprints: check that a served model is the one you shipped.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available():
        module = importlib.import_module(f"veriprint.cli.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from veriprint.errors import VeriprintError
    from veriprint.redact import RedactingFilter, redact

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
    except (VeriprintError, FileNotFoundError) as e:  # the input's fault: say what, on one line
        print(f"error: {redact(_one_line(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # exit 1 means TAMPERED: any other failure must be 2
        print(f"error: {type(e).__name__}: {redact(_one_line(e))}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    sys.exit(main())
