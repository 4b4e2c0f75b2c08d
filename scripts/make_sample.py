"""Write the small demo sample bundled with the package (see payload/ingest/samples.py for what it is).

python scripts/make_sample.py [--events 10000] [--outdir payload/resources]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from payload.ingest.samples import CONFIGS, write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--outdir", type=Path, default=Path(__file__).resolve().parents[1] / "payload" / "resources")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in CONFIGS:
        path = write_sample(args.outdir / f"sample_{name}.root", args.events, name)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {args.events} events)")


if __name__ == "__main__":
    main()
