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
import os
import sys

SUBCOMMANDS = ("fingerprint", "verify", "enroll", "inspect", "keygen", "demo", "generate", "tamper",
               "evaluate", "monitor")


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
        if not any("--config" in a.option_strings for a in p._actions):
            p.add_argument("--config", default=None, metavar="FILE.toml",
                           help="defaults for this command's options, in TOML with the flags' names "
                                "(underscores); flags given on the command line win")
            p.set_defaults(_settings_parser=p)
        p.set_defaults(_module=module)
    return parser


def _apply_settings_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         argv: list[str] | None) -> argparse.Namespace:
    """Re-parse with a ``--config`` file's values as the command's defaults."""
    from veriprint.configs import load_toml
    from veriprint.errors import ConfigError

    sub: argparse.ArgumentParser = args._settings_parser
    values = load_toml(args.config)
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config") and a.option_strings}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ConfigError(f"--config {args.config!r}: unknown setting{'s' * (len(unknown) > 1)} "
                          f"{', '.join(unknown)} for `veriprint {args.command}`; known: {', '.join(sorted(actions))}")
    sub.set_defaults(**{k: _setting(args.config, k, v, actions[k]) for k, v in values.items()})
    return parser.parse_args(argv)


def _setting(path: str, key: str, value: object, action: argparse.Action) -> object:
    """A ``--config`` value parsed as its flag parses text, or :class:`ConfigError` naming the key."""
    from veriprint.errors import ConfigError

    flag = action.option_strings[-1] if action.option_strings else key
    where = f"--config {path!r}: {key} (as {flag})"
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # a switch
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    items = value if isinstance(value, list) and action.nargs not in (None, "?") else [value]
    if action.type is None and action.choices is None and any(not isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r:.80}")
    if any(isinstance(v, list | dict | bool) for v in items):
        raise ConfigError(f"{where}: expected {'values' if len(items) > 1 else 'a value'} as on the command "
                          f"line, got {value!r:.80}")
    out = []
    for v in items:
        text = str(v)
        try:
            parsed = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from None
        if action.choices is not None and parsed not in action.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {v!r}")
        out.append(parsed)
    return out if items is value else out[0]


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
        if getattr(args, "_settings_parser", None) is not None and args.config:
            args = _apply_settings_file(parser, args, argv)
        code = int(args._module.run(args))
        sys.stdout.flush()  # a closed reader shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `veriprint inspect FILE | head`: the reader left; stop quietly
        _stdout_closed()
        return EXIT_PIPE
    except (VeriprintError, FileNotFoundError) as e:  # the input's fault: say what, on one line
        print(f"error: {redact(_one_line(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # exit 1 means TAMPERED: any other failure must be 2
        print(f"error: {type(e).__name__}: {redact(_one_line(e))}", file=sys.stderr)
        return 2


#: Exit status when standard output was closed by its reader (128 + SIGPIPE, as shells report
#: a process killed by SIGPIPE); never 0, 1 or 2, which are verdicts.
EXIT_PIPE = 141


def _stdout_closed() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 2000 else text[:2000] + "..."


if __name__ == "__main__":
    sys.exit(main())
