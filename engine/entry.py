"""What ``main_mtl.py`` and ``main_lsd.py`` run: parse flags, dispatch, and turn user errors into one line."""

from __future__ import annotations

import sys

from engine.cli import parse_args
from engine.tasks import task_class
from utils.errors import UserError


def main(track: str, description: str, argv=None) -> None:
    stage = task_class(track)
    args = parse_args(stage, description, argv)
    try:
        from engine import demo
        from engine.runner import evaluate_only, train

        started = demo.configure(args, stage) if args.demo else None
        task = evaluate_only(args) if args.eval else train(args)
        if args.demo:
            demo.report(task, args, started)
    except UserError as error:
        # Exceptions raised in DataLoader workers come back with the worker's traceback in their text: keep the
        # last line, which is the message itself.
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        message = message[len(prefix):] if message.startswith(prefix) else message
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (which saves last.pth and exits on its own): during feature extraction,
        # evaluation or the files at the end. Every file is written whole (atomically) or not at all.
        print("\nerror: interrupted (SIGINT) before the end; the files already written are complete (each is "
              "written whole or not at all)", file=sys.stderr, flush=True)
        sys.exit(130)
