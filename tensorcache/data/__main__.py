"""Data command line: inspect a data config, train a BPE.

  python -m tensorcache.data info --source kjv [--seq-len 2048]
  python -m tensorcache.data train-bpe --source stdlib --vocab-size 4096 --out tok.json
  python -m tensorcache.data fields

Any data-config field can be given as ``--set key=value`` (e.g. ``--set path=/data/txt``).
"""

from __future__ import annotations

import argparse
import ast
import sys

import numpy as np

from tensorcache import cli
from tensorcache.data import pipeline


def _config(args) -> dict:
  cfg = {"source": args.source}
  for item in args.set or []:
    key, _, raw = item.partition("=")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    cfg[key] = value
  return pipeline.resolve_data_config(cfg)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tensorcache.data", description=__doc__)
  sub = parser.add_subparsers(dest="cmd", required=True)
  sub.add_parser("fields", help="list every data-config field with default and meaning")
  for name in ("info", "train-bpe"):
    p = sub.add_parser(name)
    p.add_argument("--source", default="stdlib", help=", ".join(pipeline.SOURCES))
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    if name == "info":
      p.add_argument("--seq-len", type=int, default=1024)
    else:
      p.add_argument("--vocab-size", type=int, required=True)
      p.add_argument("--out", required=True)
      p.add_argument("--max-docs", type=int, default=None)
  cli.add_arguments(parser)
  args = parser.parse_args(argv)
  return cli.guard(_run, args.debug, args.verbose, args, start=False)  # no JAX needed


def _run(args) -> int:
  if args.cmd == "fields":
    for key, default in pipeline.DEFAULTS.items():
      print(f"{key:16s} {default!r:12s} {pipeline.FIELD_DOCS[key]}")
    return 0
  cfg = _config(args)
  if args.cmd == "train-bpe":
    tok = pipeline.train_bpe(cfg, args.vocab_size, args.out, max_docs=args.max_docs)
    print(f"wrote {args.out}: vocab {tok.vocab_size}")
    return 0
  if cfg["source"] in pipeline.TASK_SOURCES:
    task = pipeline.task_config(cfg, args.seq_len)
    print(f"{task}\nvocab_size {task.vocab_size}, min seq_len {task.min_seq_len}")
    return 0
  tc = pipeline.load_tokenized_corpus(cfg)
  train, val = pipeline.split_documents(tc.doc_ids, cfg["val_fraction"])
  lens = np.array([tc.doc_len(d) for d in range(tc.num_docs)])
  print(f"source {cfg['source']}: {tc.num_docs} documents ({len(train)} train, {len(val)} "
        f"validation), {int(lens.sum()):,} tokens, vocab {tc.vocab_size}")
  for t in (args.seq_len, 4 * args.seq_len, 32768):
    print(f"  documents >= {t + 1} tokens: {int((lens >= t + 1).sum())} "
          f"(validation: {int((lens[val] >= t + 1).sum()) if len(val) else 0})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
