"""Corpora, tokenizers, the train/validation split and batches.

Sources (`data.corpus`):
  austen       Jane Austen's six novels, decoded from the Debian package
               r-cran-janeaustenr by `rlrs corpus fetch` (a setup step: training
               never downloads anything, it fails and says to run the fetch).
  text:PATH    a UTF-8 text file, or a directory whose *.txt/*.md/*.rst files
               (recursively, sorted by path) are joined with blank lines.
  tokens:PATH  pre-tokenized ids: a 1-D integer `.npy`, or a raw uint16 `.bin`;
               the vocabulary is max id + 1. Relative paths are taken from the
               current directory.

Tokenizers (`data.tokenizer`): `bytes` (UTF-8 bytes, vocabulary 256) or `bpe`
(HuggingFace byte-level BPE of `bpe_vocab_size`, trained on the training split
only and cached on disk, so every run of a study uses the same one).

The split is a contiguous hold-out: validation is the last `val_fraction` of
the corpus (of its bytes for text, cut back to a character boundary; of the ids
for `tokens:`), training is everything before it. Evaluation always uses the
first `eval_tokens` validation tokens, cut into non-overlapping windows of
seq_len + 1, whatever the seed. Training batches are a pure function of
(seed, step), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from rlrs import atomic
from rlrs.errors import ConfigError
from rlrs.paths import data_dir
from rlrs.rdata import LazyLoadDB

# torch is imported inside the functions that build tensors: config
# resolution (Snakemake's parse, `rlrs plan`) validates data settings here and
# must not pay ~1.5 s for importing torch.

AUSTEN_PACKAGE = "r-cran-janeaustenr"
# (R object in data/Rdata, title), in the order of the package's austen_books():
# publication order. The corpus text depends on this order; never change it.
AUSTEN_BOOKS = (
    ("sensesensibility", "Sense & Sensibility"),
    ("prideprejudice", "Pride & Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
)
R_LIBRARY = "usr/lib/R/site-library/janeaustenr"  # inside the .deb
# Both lazy-load databases of the package: the data (the novels) and the code.
R_DATABASES = tuple(f"{db}.{ext}" for db in ("data/Rdata", "R/janeaustenr") for ext in ("rdx", "rdb"))
DOC_SEPARATOR = "\n\n"  # between books, and between the files of a text: directory
TEXT_SUFFIXES = (".txt", ".md", ".rst")
TOKENIZERS = ("bytes", "bpe")
SCHEMES = ("austen", "text:PATH", "tokens:PATH")
DATA_KEYS = ("corpus", "tokenizer", "bpe_vocab_size", "val_fraction", "eval_tokens")


class CorpusNotFoundError(FileNotFoundError):
    """The austen corpus has not been fetched on this machine."""


@dataclass
class Corpus:
    name: str  # e.g. "austen/bytes"
    train: torch.Tensor  # 1-D token ids (uint8 for bytes, int32 otherwise)
    val: torch.Tensor
    vocab_size: int
    bytes_per_token: float  # mean UTF-8 bytes per validation token: bits per byte = nats / ln 2 / this
    description: dict = field(default_factory=dict)


# ---------------------------------------------------------------- settings


def _parse_corpus(spec) -> tuple[str, Path | None]:
    if spec == "austen":
        return "austen", None
    scheme, sep, path = str(spec).partition(":")
    if not sep or scheme not in ("text", "tokens") or not path:
        raise ConfigError("data.corpus", f"{spec!r} is not a corpus; allowed: {', '.join(SCHEMES)}")
    return scheme, Path(path).expanduser()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is not 1


def validate_data_config(data_cfg: dict) -> None:
    """Raise ConfigError naming the field for any bad `data:` setting. Cheap: reads no corpus."""
    if not isinstance(data_cfg, dict):
        raise ConfigError(
            "data", f"expected a mapping of settings ({', '.join(DATA_KEYS)}), got {type(data_cfg).__name__}"
        )
    unknown = sorted(set(data_cfg) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}", f"unknown key; allowed keys here: {', '.join(DATA_KEYS)}")
    cfg = data_cfg
    scheme, path = _parse_corpus(cfg["corpus"])
    if cfg["tokenizer"] not in TOKENIZERS:
        raise ConfigError(
            "data.tokenizer", f"{cfg['tokenizer']!r} is not a tokenizer; allowed: {', '.join(TOKENIZERS)}"
        )
    vocab = cfg["bpe_vocab_size"]
    if not _is_int(vocab) or vocab < 257:
        raise ConfigError(
            "data.bpe_vocab_size", f"{vocab!r} is not valid; allowed: an integer >= 257 (256 bytes + merges)"
        )
    frac = cfg["val_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError("data.val_fraction", f"{frac!r} is out of range; allowed: a number with 0 < val_fraction < 1")
    eval_tokens = cfg["eval_tokens"]
    if not _is_int(eval_tokens) or eval_tokens < 1:
        raise ConfigError("data.eval_tokens", f"{eval_tokens!r} is not valid; allowed: a positive integer")
    if scheme == "text" and not (path.is_file() or path.is_dir()):
        raise ConfigError(
            "data.corpus",
            f"{path} does not exist; allowed: a UTF-8 text file or a directory of {'/'.join(TEXT_SUFFIXES)} files",
        )
    if scheme == "tokens":
        if path.suffix not in (".npy", ".bin") or not path.is_file():
            raise ConfigError(
                "data.corpus",
                f"{path} is not an existing .npy or .bin file; allowed: tokens:FILE.npy (integers) or tokens:FILE.bin (raw uint16)",
            )
        if cfg["tokenizer"] != "bytes":
            raise ConfigError(
                "data.tokenizer",
                f"{cfg['tokenizer']!r} cannot apply to pre-tokenized ids; allowed with a tokens: corpus: bytes (the default; it is ignored)",
            )


def vocab_size_for(data_cfg: dict) -> int:
    """The model's vocabulary for this data config, without tokenizing anything."""
    cfg = data_cfg
    scheme, path = _parse_corpus(cfg["corpus"])
    if scheme == "tokens":
        return int(_read_token_file(path).max()) + 1
    return 256 if cfg["tokenizer"] == "bytes" else int(cfg["bpe_vocab_size"])


# ---------------------------------------------------------------- sources


def _austen_text() -> tuple[bytes, str]:
    folder = data_dir() / "austen"
    text_path, meta_path = folder / "austen.txt", folder / "meta.json"
    if not (text_path.is_file() and meta_path.is_file()):
        raise CorpusNotFoundError(
            f"the austen corpus is not in {folder}; run `rlrs corpus fetch` once (setup step) or set data.corpus"
        )
    raw, meta = text_path.read_bytes(), json.loads(meta_path.read_text())
    if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise CorpusNotFoundError(f"{text_path} does not match its meta.json checksum; run `rlrs corpus fetch` again")
    return raw, f"austen ({AUSTEN_PACKAGE} {meta['version']})"


def _text_source(path: Path) -> bytes:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError("data.corpus", f"{path} holds no {'/'.join(TEXT_SUFFIXES)} files")
    else:
        files = [path]
    parts = [p.read_bytes() for p in files]
    for p, raw in zip(files, parts):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError("data.corpus", f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return DOC_SEPARATOR.encode().join(p.rstrip(b"\n") for p in parts) + b"\n"


def _read_token_file(path: Path) -> np.ndarray:
    ids = np.load(path, mmap_mode="r") if path.suffix == ".npy" else np.memmap(path, dtype="<u2", mode="r")
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.size == 0:
        raise ConfigError(
            "data.corpus", f"{path} must hold a non-empty 1-D array of integers (got {ids.dtype}, shape {ids.shape})"
        )
    if ids.dtype.kind == "i" and ids.min() < 0:
        raise ConfigError("data.corpus", f"{path} holds negative token ids")
    return ids


def _split_point(n: int, val_fraction: float) -> int:
    """Index where validation starts: the last val_fraction of n items are held out."""
    return n - int(n * val_fraction)


def _split_text(raw: bytes, val_fraction: float) -> tuple[bytes, bytes]:
    cut = _split_point(len(raw), val_fraction)
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
        cut -= 1
    return raw[:cut], raw[cut:]


# ---------------------------------------------------------------- tokenizers


def _train_bpe(train_text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    # Train on lines so that no single sequence holds the whole corpus.
    tok.train_from_iterator(train_text.splitlines(keepends=True), trainer=trainer)
    return tok


def bpe_tokenizer(train_raw: bytes, vocab_size: int):
    """The byte-level BPE for this training text, trained once and cached on disk
    under a key of (training-text sha256, vocabulary size); a file lock makes
    concurrent workers of one study train it once and all use the same file."""
    from tokenizers import Tokenizer
    from tokenizers import __version__ as tokenizers_version

    key = hashlib.sha256(f"{hashlib.sha256(train_raw).hexdigest()}:{vocab_size}".encode()).hexdigest()[:16]
    path = data_dir() / "bpe" / f"{key}-v{vocab_size}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            tok = _train_bpe(train_raw.decode("utf-8"), vocab_size)
            atomic.write_bytes(path, tok.to_str().encode())
            print(
                f"rlrs: trained a {vocab_size}-token BPE (tokenizers {tokenizers_version}) -> {path}", file=sys.stderr
            )
    return Tokenizer.from_file(str(path)), path


def _bpe_ids(tok, text: str) -> torch.Tensor:
    import torch

    lines = text.splitlines(keepends=True)
    ids = [i for enc in tok.encode_batch(lines, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.int32)


# ---------------------------------------------------------------- the corpus


def load_corpus(data_cfg: dict) -> Corpus:
    """Read, tokenize and split the corpus, and check that `eval_tokens` fits
    its validation split. Memoized per process (a grid worker may train several
    runs), keyed by what decides the tokens and by the data folder."""
    cfg = data_cfg
    validate_data_config(cfg)
    bpe_vocab = cfg["bpe_vocab_size"] if cfg["tokenizer"] == "bpe" else None
    corpus = _load_corpus(cfg["corpus"], cfg["tokenizer"], bpe_vocab, cfg["val_fraction"], str(data_dir()))
    n_val = len(corpus.val)
    if cfg["eval_tokens"] > n_val:
        raise ConfigError(
            "data.eval_tokens",
            f"{cfg['eval_tokens']} is more than the {n_val} validation tokens of {corpus.name}; allowed: at most {n_val} (or raise data.val_fraction)",
        )
    return corpus


@functools.lru_cache(maxsize=4)
def _load_corpus(spec: str, tokenizer: str, bpe_vocab: int | None, val_fraction: float, _data_dir: str) -> Corpus:
    import torch

    scheme, path = _parse_corpus(spec)
    if scheme == "tokens":
        ids = torch.from_numpy(np.asarray(_read_token_file(path), dtype=np.int32))
        cut = _split_point(len(ids), val_fraction)
        train, val = ids[:cut], ids[cut:]
        vocab, bytes_per_token, tokenizer = int(ids.max()) + 1, 1.0, "pretokenized"
        sha, source, n_bytes = hashlib.sha256(ids.numpy().tobytes()).hexdigest(), str(path), None
        name = f"tokens:{path.name}"
    else:
        raw, source = _austen_text() if scheme == "austen" else (_text_source(path), str(path))
        sha, n_bytes = hashlib.sha256(raw).hexdigest(), len(raw)
        train_raw, val_raw = _split_text(raw, val_fraction)
        if tokenizer == "bytes":
            train = torch.frombuffer(bytearray(train_raw), dtype=torch.uint8)
            val = torch.frombuffer(bytearray(val_raw), dtype=torch.uint8)
            vocab = 256
        else:
            vocab, (tok, tok_path) = bpe_vocab, bpe_tokenizer(train_raw, bpe_vocab)
            train, val = _bpe_ids(tok, train_raw.decode()), _bpe_ids(tok, val_raw.decode())
            tokenizer = f"bpe{vocab}"
            source += f" + {tok_path.name}"
        bytes_per_token = len(val_raw) / max(len(val), 1)
        name = f"{'austen' if scheme == 'austen' else f'text:{path.name}'}/{tokenizer}"
    counts = torch.bincount(val.long(), minlength=vocab).double()
    p = counts[counts > 0] / len(val)
    description = {
        "source": source,
        "sha256": sha,
        "bytes": n_bytes,
        "tokenizer": tokenizer,
        "val_fraction": val_fraction,
        "n_train_tokens": len(train),
        "n_val_tokens": len(val),
        # Entropy of the validation unigram distribution: the loss of a model
        # that ignores context, a reference level for training curves.
        "val_unigram_entropy_nats": float(-(p * p.log()).sum()),
    }
    return Corpus(name, train, val, vocab, float(bytes_per_token), description)


# ---------------------------------------------------------------- batches


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather windows of seq_len + 1 tokens at `starts` in one indexing op; x is
    the first seq_len, y the same shifted by one."""
    import torch

    idx = starts[:, None] + torch.arange(seq_len + 1)
    w = tokens[idx].long().to(device)
    return w[:, :-1], w[:, 1:]


def train_batch(
    corpus: Corpus, batch_size: int, seq_len: int, seed: int, step: int, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `step` of a run with `seed`: random windows of the training split.
    A pure function of (seed, step): resuming needs no data state."""
    import torch

    n_starts = len(corpus.train) - seq_len
    if n_starts < 1:
        raise ConfigError(
            "model.seq_len",
            f"{seq_len} needs at least {seq_len + 1} training tokens; {corpus.name} has {len(corpus.train)}",
        )
    # SeedSequence mixes (seed, step) into a well-spread 64-bit seed; nearby
    # pairs give unrelated streams, and no global RNG state is touched.
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> 1))
    starts = torch.randint(0, n_starts, (batch_size,), generator=gen)
    return _windows(corpus.train, starts, seq_len, device)


def eval_batches(
    corpus: Corpus, seq_len: int, eval_tokens: int, batch_size: int, device="cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed evaluation set: the first eval_tokens validation tokens as
    eval_tokens // (seq_len + 1) non-overlapping windows, in batches of
    batch_size (the last may be smaller: weight batch means by their size)."""
    import torch

    n_windows = min(eval_tokens, len(corpus.val)) // (seq_len + 1)
    if eval_tokens > len(corpus.val) or n_windows < 1:
        raise ConfigError(
            "data.eval_tokens",
            f"{eval_tokens} must be between seq_len + 1 = {seq_len + 1} and the {len(corpus.val)} validation tokens of {corpus.name}",
        )
    starts = torch.arange(n_windows) * (seq_len + 1)
    return [_windows(corpus.val, chunk, seq_len, device) for chunk in starts.split(batch_size)]


# ---------------------------------------------------------------- fetch (setup time)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(
            f"`{cmd[0]}` is not available: fetching the austen corpus needs Debian's apt-get and dpkg-deb"
        ) from None


def decode_austen(root: Path) -> tuple[str, list[dict]]:
    """The six novels from an extracted r-cran-janeaustenr: their lines joined
    by newlines, books in publication order separated by a blank line."""
    db = LazyLoadDB(root / R_LIBRARY / "data" / "Rdata")
    books, info = [], []
    for obj, title in AUSTEN_BOOKS:
        lines = db[obj]
        text = "\n".join(line or "" for line in lines).strip("\n")  # NA lines become empty
        books.append(text)
        info.append({"object": obj, "title": title, "lines": len(lines), "bytes": len(text.encode())})
    return DOC_SEPARATOR.join(books) + "\n", info


def fetch_austen() -> dict:
    """Download the Debian package (no install), decode it, write austen.txt and meta.json."""
    with tempfile.TemporaryDirectory(prefix="rlrs-fetch-") as tmp:
        tmp = Path(tmp)
        got = _run(["apt-get", "download", AUSTEN_PACKAGE], tmp)
        if got.returncode != 0 and ("Unable to locate" in got.stderr or "candidate" in got.stderr):
            # Package lists missing (a fresh container): refresh them once, retry.
            update = _run(["apt-get", "update"], tmp)
            if update.returncode != 0:
                raise RuntimeError(f"`apt-get update` failed:\n{update.stderr.strip()}")
            got = _run(["apt-get", "download", AUSTEN_PACKAGE], tmp)
        if got.returncode != 0:
            raise RuntimeError(f"`apt-get download {AUSTEN_PACKAGE}` failed:\n{got.stderr.strip()}")
        (deb,) = tmp.glob(f"{AUSTEN_PACKAGE}_*.deb")
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], tmp).stdout.strip()
        extracted = _run(["dpkg-deb", "-x", str(deb), "root"], tmp)
        if extracted.returncode != 0:
            raise RuntimeError(f"`dpkg-deb -x {deb.name}` failed:\n{extracted.stderr.strip()}")
        text, books = decode_austen(tmp / "root")
        # Keep the package's R databases next to the text: provenance, and what
        # the R reader's tests decode without network.
        folder = data_dir() / "austen"
        lib = tmp / "root" / R_LIBRARY
        for rel in R_DATABASES:
            atomic.write_bytes(folder / "package" / rel, (lib / rel).read_bytes())
    raw = text.encode("utf-8")
    meta = {
        "package": AUSTEN_PACKAGE,
        "version": version,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "bytes": len(raw),
        "books": books,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic.write_bytes(folder / "austen.txt", raw)  # text first: meta.json marks a complete fetch
    atomic.write_bytes(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta
