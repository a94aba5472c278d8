"""Download pretrained files into the pretrain folder (the paths so-vits-svc 4.1 uses).

NAME is a speech encoder (e.g. whisper-ppg-base, hubertsoft), rmvpe, fcpe, nsf_hifigan, or all-available
(every file with a direct download). Files already present are skipped (their sha256 is checked where it
is published; a damaged file is downloaded again). Files without a direct download are explained: where to
get them and where to put them. --list shows every name, its files and whether they are present.
"""
from __future__ import annotations

import argparse
import os

from core.download import MIRROR_ENV, fetch_pretrained, listing, raise_if_incomplete
from core.cli_types import finite_float
from core.errors import run_cli
from core.fileio import make_output_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help="what to download (see --list)")
    parser.add_argument("--pretrain_dir", type=str, default="pretrain", help="where the files go")
    parser.add_argument("--list", action="store_true", help="list every NAME, its files and their state")
    parser.add_argument("--base_url", type=str, default=os.environ.get(MIRROR_ENV) or None,
                        help=f"mirror: replaces the scheme and host of every URL, keeping its path "
                             f"(default: ${MIRROR_ENV} if set)")
    parser.add_argument("--sha256", type=str, default=None,
                        help="with exactly one download: check it against this sha256 (or its first 8+ hex "
                             "digits) instead of the published one, for mirrors serving another build")
    parser.add_argument("--timeout", type=finite_float(0, open_low=True), default=30.0,
                        help="seconds to wait to connect and per read")
    args = parser.parse_args()
    if args.list:
        print(listing(args.pretrain_dir))
        return 0
    if not args.names:
        parser.error("give at least one NAME, or --list")
    make_output_dir(args.pretrain_dir, "--pretrain_dir")
    result = fetch_pretrained(args.names, args.pretrain_dir, args.base_url, args.sha256, args.timeout)
    raise_if_incomplete(result, args.pretrain_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
