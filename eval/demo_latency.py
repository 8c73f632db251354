"""How long the demo takes from upload to playable stems, on this machine.

``python -m eval.demo_latency [--model demix-small] [--seconds 30] [--head film] [--repeats 2]``

Launches the Gradio app on a free local port, uploads a generated film clip through
``gradio_client`` (the same HTTP path a browser uses) and times the whole request: upload,
separation, preview files and spectrograms, until the page's players can load the stems.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Print the upload-to-playable-stems time."""
    p = argparse.ArgumentParser(prog="python -m eval.demo_latency")
    p.add_argument("--model", default="demix-small")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--head", default="film")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="demix-latency-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    from gradio_client import Client, handle_file

    from apps.demo import build_demo
    from demix import Separator
    from demix.demo import write_demo_clip

    sep = Separator.from_pretrained(args.model)
    demo = build_demo(sep, root=root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    clip = write_demo_clip(root / "clip" / "clip30.wav", args.seconds)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    stems = list(sep.heads[args.head]) if args.head in sep.heads else None
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        client.predict(handle_file(str(clip)), args.head, stems, "none", api_name="/run")
        times.append(time.perf_counter() - start)
    demo.close()
    demo.demix_app.cleanup()
    print(
        f"model {args.model}, {args.seconds:g}-s stereo 44.1 kHz clip, head {args.head}, "
        f"{os.cpu_count()} CPU cores: upload → playable stems {min(times):.1f} s "
        f"(best of {args.repeats}; all: {', '.join(f'{t:.1f}' for t in times)} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
