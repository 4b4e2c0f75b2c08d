"""Write the decay-tree samples of the graph (GCN) example (see payload/ingest/samples.py for what they are).

python scripts/make_graph_sample.py [--events 20000] [--outdir graph-data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from payload.ingest.samples import write_graph_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--outdir", type=Path, default=Path("graph-data"))
    args = parser.parse_args()
    for path in write_graph_samples(args.outdir, args.events):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
