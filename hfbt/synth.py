"""Deterministic synthetic Hub repos for tests, benches and the demo.

The same (function, arguments) always writes the same bytes, so hashes, commits and torrents are
reproducible across runs and machines. Shard sizes are deliberately not multiples of the 4 MiB piece
length, so the last piece of every torrent is a short one.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

MiB = 1024 * 1024
_CHUNK = MiB


def make_model_repo(dest: Path, shard_mb: float = 140, seed: int = 0) -> dict[str, int]:
    """Write a two-shard safetensors model repo into `dest`; return {relative path: size}."""
    dest = Path(dest)
    rng = random.Random(seed)
    sizes = (int(shard_mb * MiB) + 12345, int(shard_mb * MiB * 0.9) + 4321)
    names = [f"model-{i + 1:05d}-of-{len(sizes):05d}.safetensors" for i in range(len(sizes))]
    weight_map: dict[str, str] = {}
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        tensor = f"model.layers.{i}.weight"
        _write_safetensors(dest / name, size, tensor, rng)
        weight_map[tensor] = name
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    config = {"architectures": ["SynthForCausalLM"], "model_type": "synth", "hidden_size": 64, "seed": seed}
    vocab = {f"tok{i}": i for i in range(2000)}
    small = {
        "model.safetensors.index.json": _json(index),
        "config.json": _json(config),
        "tokenizer.json": _json({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab}}),
        "tokenizer_config.json": _json(
            {"model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}
        ),
        "generation_config.json": _json({"max_new_tokens": 32, "do_sample": False}),
        "empty.txt": "",
        "nested/deeper/notes.md": f"# Notes\n\nSynthetic model, seed {seed}.\n",
    }
    for rel, text in small.items():
        _write_text(dest / rel, text)
    return _sizes(dest, [*names, *small])


def make_dataset_repo(dest: Path, seed: int = 1) -> dict[str, int]:
    """Write a small dataset repo (card, one ~3 MB parquet-looking shard, a CSV); return {path: size}."""
    dest = Path(dest)
    rng = random.Random(seed)
    card = "---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*\n---\n"
    _write_text(dest / "README.md", f"{card}# Synthetic dataset {seed}\n")
    parquet = "data/train-00000-of-00001.parquet"
    (dest / parquet).parent.mkdir(parents=True, exist_ok=True)
    with open(dest / parquet, "wb") as f:
        # Parquet files start and end with the magic "PAR1"; the body is just random bytes.
        f.write(b"PAR1")
        _write_random(f, 3 * MiB + 777, rng)
        f.write(b"PAR1")
    rows = "".join(f"{i},{rng.randrange(10**6)},label{i % 7}\n" for i in range(500))
    _write_text(dest / "data/test.csv", "id,value,label\n" + rows)
    return _sizes(dest, ["README.md", parquet, "data/test.csv"])


def _write_safetensors(path: Path, size: int, tensor: str, rng: random.Random) -> None:
    """A valid safetensors file of exactly `size` bytes: one U8 tensor filling everything after the header."""
    data_len = size
    for _ in range(3):  # the header length depends on data_len's digit count; it settles in two rounds
        header = _safetensors_header(tensor, data_len)
        data_len = size - 8 - len(header)
    if data_len <= 0 or 8 + len(header) + data_len != size:
        raise ValueError(f"cannot make a safetensors file of {size} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        _write_random(f, data_len, rng)


def _safetensors_header(tensor: str, data_len: int) -> bytes:
    meta = {
        "__metadata__": {"format": "pt"},
        tensor: {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]},
    }
    raw = json.dumps(meta, separators=(",", ":")).encode()
    # The format pads the header with spaces to a multiple of 8 so the data is aligned.
    return raw + b" " * (-len(raw) % 8)


def _write_random(f, n: int, rng: random.Random) -> None:  # noqa: ANN001 - any binary file object
    while n > 0:
        k = min(_CHUNK, n)
        f.write(rng.randbytes(k))
        n -= k


def write_random_file(path: Path, size: int, seed: int) -> None:
    """A file of `size` seeded pseudo-random bytes (incompressible, fast to write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _write_random(f, size, random.Random(seed))


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())


def _sizes(root: Path, paths: list[str]) -> dict[str, int]:
    # Only what this call wrote: `dest` may hold other files (e.g. a second revision's leftovers).
    return {p: (root / p).stat().st_size for p in sorted(paths)}
