"""The data layer: the R lazy-load reader, the austen corpus, user corpora,
tokenizers, the split, batches and field-named errors. Everything runs on real
files: the real Debian package's R databases, real text, real BPE training."""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch

from rlrs import data, rdata
from rlrs.cli import main as rlrs_main
from rlrs.config import DEFAULTS
from rlrs.errors import ConfigError

from _data_fixtures import austen_corpus  # noqa: F401  (session fixture)

AUSTEN_BYTES = 4_025_034  # r-cran-janeaustenr 1.0.0-1 (Debian bookworm), decoded by rlrs


def block(settings: dict) -> dict:
    """A `data:` block as rlrs.config fills it (the data functions take the whole block)."""
    return {**DEFAULTS["data"], **settings}


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """An empty, private data folder (BPE caches, missing-corpus errors)."""
    home = tmp_path / "rlrs-data"
    monkeypatch.setenv("RLRS_DATA_DIR", str(home))
    return home


# ---------------------------------------------------------------- R serialization, constructed


def _i(*values):
    return struct.pack(f">{len(values)}i", *values)


def _flags(kind, levels=0, attr=False, tag=False):
    return _i(kind | levels << 12 | attr << 9 | tag << 10)


def _charsxp(s, levels=8):  # 8 = UTF-8 mark
    if s is None:
        return _flags(9) + _i(-1)
    raw = s if isinstance(s, bytes) else s.encode()
    return _flags(9, levels) + _i(len(raw)) + raw


def _sym(name):
    return _flags(rdata.SYMSXP) + _charsxp(name, 64)


def _ref(index):
    return _i(index << 8 | rdata.REFSXP)


NIL = _i(rdata.NILVALUE_SXP)
HEADER = b"X\n" + _i(3, 0x040201, 0x030500, 5) + b"UTF-8"


def _named_list(names, items):
    body = b"".join(items)
    names_attr = (
        _flags(rdata.LISTSXP, tag=True)
        + _sym("names")
        + _flags(rdata.STRSXP)
        + _i(len(names))
        + b"".join(map(_charsxp, names))
        + NIL
    )
    return _flags(rdata.VECSXP, attr=True) + _i(len(items)) + body + names_attr


def test_unserialize_covers_the_vector_types_exactly():
    compact_seq = (  # ALTREP compact_intseq 10..14: info pairlist, state (n, start, step), no attributes
        _i(rdata.ALTREP_SXP)
        + _flags(rdata.LISTSXP)
        + _sym("compact_intseq")
        + _flags(rdata.LISTSXP)
        + _sym("base")
        + _flags(rdata.LISTSXP)
        + _flags(rdata.INTSXP)
        + _i(1, 13)
        + NIL
        + _flags(rdata.REALSXP)
        + _i(3)
        + struct.pack(">3d", 5, 10, 1)
        + NIL
    )
    pairs = (  # pairlist(a = 1L, b = <the symbol a, by reference>): symbols so far: 1 compact_intseq, 2 base, 3 a
        _flags(rdata.LISTSXP, tag=True)
        + _sym("a")
        + _flags(rdata.INTSXP)
        + _i(1, 1)
        + _flags(rdata.LISTSXP, tag=True)
        + _sym("b")
        + _ref(3)
        + NIL
    )
    blob = HEADER + _named_list(
        ["ints", "reals", "lgl", "strs", "seq", "pairs"],
        [
            _flags(rdata.INTSXP) + _i(3, 1, rdata.NA_INTEGER, -3),
            _flags(rdata.REALSXP) + _i(2) + struct.pack(">2d", 0.5, 2.0),
            _flags(rdata.LGLSXP) + _i(3, 1, 0, rdata.NA_INTEGER),
            _flags(rdata.STRSXP) + _i(3) + _charsxp("café") + _charsxp(None) + _charsxp(b"na\xefve", 4),
            compact_seq,
            pairs,
        ],
    )
    value = rdata.unserialize(blob).as_dict()
    assert value["ints"] == [1, None, -3]
    assert value["reals"] == [0.5, 2.0]
    assert value["lgl"] == [True, False, None]
    assert value["strs"] == ["café", None, "naïve"]  # UTF-8, NA, latin-1
    assert value["seq"] == [10, 11, 12, 13, 14]
    assert value["pairs"] == [[1], "a"] and value["pairs"].names == ["a", "b"]
    assert isinstance(value["pairs"][1], rdata.Sym)


def test_unserialize_refuses_what_it_cannot_read():
    with pytest.raises(rdata.RDataError, match="XDR"):
        rdata.unserialize(b"A\n" + HEADER[2:] + NIL)
    with pytest.raises(rdata.RDataError, match="version 4"):
        rdata.unserialize(b"X\n" + _i(4, 0, 0) + NIL)
    with pytest.raises(rdata.RDataError, match="truncated"):
        rdata.unserialize(HEADER + _flags(rdata.INTSXP) + _i(5, 1))
    with pytest.raises(rdata.RDataError, match="type 22"):  # an external pointer
        rdata.unserialize(HEADER + _flags(22))


def test_lazy_load_db_framing(tmp_path):
    """A database written the way R writes one: gzip'd index, zlib records,
    and a record with R's explicit compression type byte (bzip2)."""
    plain = HEADER + _flags(rdata.STRSXP) + _i(1) + _charsxp("zlib")
    typed = HEADER + _flags(rdata.INTSXP) + _i(2, 7, 8)
    records = [
        struct.pack(">I", len(plain)) + zlib.compress(plain),
        struct.pack(">I", len(typed)) + b"2" + bz2.compress(typed),
    ]
    (tmp_path / "db.rdb").write_bytes(b"".join(records))
    key = lambda off, n: _flags(rdata.INTSXP) + _i(2, off, n)  # noqa: E731
    index = HEADER + _named_list(
        ["variables", "references", "compressed"],
        [
            _named_list(["a", "b"], [key(0, len(records[0])), key(len(records[0]), len(records[1]))]),
            _flags(rdata.VECSXP) + _i(0),
            _flags(rdata.LGLSXP) + _i(1, 1),
        ],
    )
    (tmp_path / "db.rdx").write_bytes(gzip.compress(index))
    db = rdata.LazyLoadDB(tmp_path / "db")
    assert db.names() == ["a", "b"]
    assert db["a"] == ["zlib"] and db["b"] == [7, 8]
    with pytest.raises(KeyError, match="'c' is not in"):
        db["c"]


# ---------------------------------------------------------------- the real package


def test_rdata_decodes_the_real_package(austen_corpus):
    db = rdata.LazyLoadDB(austen_corpus / "package" / "data" / "Rdata")
    assert sorted(db.names()) == sorted(obj for obj, _ in data.AUSTEN_BOOKS)
    pride = db["prideprejudice"]
    assert len(pride) == 13030 and all(isinstance(line, str) for line in pride)
    assert pride[:3] == ["PRIDE AND PREJUDICE", "", "By Jane Austen"]
    assert pride[9] == "It is a truth universally acknowledged, that a single man in possession"
    assert [len(db[obj]) for obj, _ in data.AUSTEN_BOOKS] == [12624, 13030, 15349, 16235, 7856, 8328]


def test_rdata_walks_the_code_database(austen_corpus):
    """The package's R code: environments, namespace references across records
    and a byte-compiled closure all decode."""
    db = rdata.LazyLoadDB(austen_corpus / "package" / "R" / "janeaustenr")
    assert db[".packageName"] == ["janeaustenr"]
    assert set(db[".__global__"]) == {obj for obj, _ in data.AUSTEN_BOOKS} | {"book"}
    assert set(db.references) == {"env::1", "env::2", "env::3", "env::4"}
    constants = db["austen_books"][1][1]  # closure -> byte code -> constant pool
    assert "books" in repr(constants[0]) and "tbl_df" in repr(constants[0])


# ---------------------------------------------------------------- austen


def test_austen_corpus_is_the_six_novels(austen_corpus):
    meta = json.loads((austen_corpus / "meta.json").read_text())
    text = (austen_corpus / "austen.txt").read_text(encoding="utf-8")
    assert meta["bytes"] == len(text.encode()) == AUSTEN_BYTES
    assert [b["title"] for b in meta["books"]] == [t for _, t in data.AUSTEN_BOOKS]
    assert text.count("Elizabeth Bennet") == 8
    starts = [
        text.index(title)
        for title in (
            "SENSE AND SENSIBILITY",
            "PRIDE AND PREJUDICE",
            "MANSFIELD PARK",
            "\nEMMA\n",
            "NORTHANGER ABBEY",
            "\nPersuasion\n",
        )
    ]
    assert starts == sorted(starts) and starts[0] == 0
    assert "\n\nPRIDE AND PREJUDICE\n" in text and text.endswith("Finis\n")


@pytest.mark.skipif(
    shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
    reason="fetching needs Debian's apt-get and dpkg-deb",
)
def test_fetch_is_real_and_reproducible(austen_corpus, data_home):
    """A fresh fetch (apt-get download + dpkg-deb + the R reader) gives the same bytes."""
    meta = data.fetch_austen()
    assert meta["sha256"] == json.loads((austen_corpus / "meta.json").read_text())["sha256"]
    assert (data_home / "austen" / "austen.txt").read_bytes() == (austen_corpus / "austen.txt").read_bytes()
    assert sorted(p.name for p in data_home.joinpath("austen").iterdir()) == ["austen.txt", "meta.json", "package"]


def test_missing_or_damaged_austen_says_how_to_fetch(data_home):
    with pytest.raises(data.CorpusNotFoundError, match="rlrs corpus fetch"):
        data.load_corpus(block({"corpus": "austen"}))
    (data_home / "austen").mkdir(parents=True)
    (data_home / "austen" / "austen.txt").write_text("not the novels")
    (data_home / "austen" / "meta.json").write_text(json.dumps({"sha256": "0" * 64, "version": "x"}))
    with pytest.raises(data.CorpusNotFoundError, match="checksum"):
        data.load_corpus(block({"corpus": "austen"}))


def test_austen_bytes_split_is_a_contiguous_holdout(austen_corpus):
    c = data.load_corpus(block({"corpus": "austen", "val_fraction": 0.05}))
    raw = (austen_corpus / "austen.txt").read_bytes()
    assert c.name == "austen/bytes" and c.vocab_size == 256 and c.bytes_per_token == 1.0
    assert len(c.val) == int(AUSTEN_BYTES * 0.05) == 201_251
    assert bytes(c.train.numpy()) + bytes(c.val.numpy()) == raw  # disjoint, nothing lost, val last
    assert (
        c.description["n_train_tokens"] == 3_823_783
        and c.description["sha256"] == json.loads((austen_corpus / "meta.json").read_text())["sha256"]
    )
    assert c.description["val_unigram_entropy_nats"] == pytest.approx(3.0733, abs=1e-4)
    data._load_corpus.cache_clear()
    again = data.load_corpus(block({"corpus": "austen", "val_fraction": 0.05}))
    assert again is not c and torch.equal(again.val, c.val) and torch.equal(again.train, c.train)
    assert data.load_corpus(block({"corpus": "austen", "val_fraction": 0.05})) is again  # memoized


def test_cli_corpus_info(austen_corpus, capsys):
    assert rlrs_main(["corpus", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "austen/bytes" and info["bytes"] == AUSTEN_BYTES and info["n_val_tokens"] == 201_251


def test_cli_corpus_refuses_other_fetches(capsys):
    assert rlrs_main(["corpus", "fetch", "--corpus", "text:x"]) == 2
    assert "only 'austen'" in capsys.readouterr().err


# ---------------------------------------------------------------- batches and evaluation


def test_train_batches_are_a_pure_function_of_seed_and_step(austen_corpus):
    c = data.load_corpus(block({"corpus": "austen"}))
    x, y = data.train_batch(c, 8, 64, seed=3, step=10)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    raw = bytes(c.train.numpy())
    assert all(bytes(row.tolist()) + bytes(y[i, -1:].tolist()) in raw for i, row in enumerate(x))
    for step in range(10):  # other batches in between change nothing: resume needs only the step
        data.train_batch(c, 8, 64, seed=3, step=step)
    x2, y2 = data.train_batch(c, 8, 64, seed=3, step=10)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, data.train_batch(c, 8, 64, seed=3, step=11)[0])
    assert not torch.equal(x, data.train_batch(c, 8, 64, seed=4, step=10)[0])


def test_eval_batches_are_fixed_non_overlapping_windows(austen_corpus):
    c = data.load_corpus(block({"corpus": "austen"}))
    batches = data.eval_batches(c, seq_len=127, eval_tokens=65536, batch_size=100)
    assert [x.shape[0] for x, _ in batches] == [100, 100, 100, 100, 100, 12]  # 65536 // 128 = 512 windows
    windows = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in batches])
    assert torch.equal(windows.flatten(), c.val[: 512 * 128].long())  # the first eval_tokens, each token once
    again = data.eval_batches(c, seq_len=127, eval_tokens=65536, batch_size=100)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_eval_tokens_must_fit_the_validation_split(austen_corpus):
    with pytest.raises(ConfigError, match="201251 validation tokens") as err:
        data.load_corpus(block({"corpus": "austen", "eval_tokens": 300_000}))
    assert err.value.field == "data.eval_tokens"
    c = data.load_corpus(block({"corpus": "austen"}))
    with pytest.raises(ConfigError) as err:
        data.eval_batches(c, seq_len=128, eval_tokens=100, batch_size=4)  # not one window of 129
    assert err.value.field == "data.eval_tokens"


def test_train_batch_speed(austen_corpus):
    import time

    c = data.load_corpus(block({"corpus": "austen"}))
    t = time.perf_counter()
    for step in range(200):
        data.train_batch(c, 16, 128, seed=0, step=step)
    assert (time.perf_counter() - t) / 200 < 0.005  # measured ~40 us; a Python loop per row would be slower


# ---------------------------------------------------------------- user corpora


def test_text_directory_is_joined_in_sorted_path_order(tmp_path):
    corpus = tmp_path / "docs"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "b.txt").write_text("bravo\n")
    (corpus / "a.md").write_text("alpha\n\n\n")
    (corpus / "sub" / "c.rst").write_text("charlie ünïcode")
    (corpus / "skip.py").write_text("print('not text')\n")
    cfg = {"corpus": f"text:{corpus}", "val_fraction": 0.25, "eval_tokens": 4}
    c = data.load_corpus(block(cfg))
    joined = "alpha\n\nbravo\n\ncharlie ünïcode\n".encode()
    assert bytes(c.train.numpy()) + bytes(c.val.numpy()) == joined
    assert len(c.val) == int(len(joined) * 0.25) == 8
    assert c.name == "text:docs/bytes" and c.description["bytes"] == len(joined)


def test_text_split_never_cuts_a_character(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("ééééé")  # 10 bytes + "\n": holding out int(11 * 0.2) = 2 bytes would split the last é
    c = data.load_corpus(block({"corpus": f"text:{path}", "val_fraction": 0.2, "eval_tokens": 1}))
    assert bytes(c.val.numpy()).decode() == "é\n" and bytes(c.train.numpy()).decode() == "éééé"


def test_text_must_be_utf8(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        data.load_corpus(block({"corpus": f"text:{tmp_path / 'latin.txt'}", "eval_tokens": 1}))
    assert err.value.field == "data.corpus"


@pytest.mark.parametrize("suffix", [".npy", ".bin"])
def test_token_files(tmp_path, suffix):
    ids = (np.arange(1000) * 7919 % 1200).astype(np.uint16)
    path = tmp_path / f"ids{suffix}"
    np.save(path, ids) if suffix == ".npy" else ids.tofile(path)
    cfg = {"corpus": f"tokens:{path}", "val_fraction": 0.1, "eval_tokens": 100}
    assert data.vocab_size_for(block(cfg)) == int(ids.max()) + 1 == 1200
    c = data.load_corpus(block(cfg))
    assert c.vocab_size == 1200 and c.name == f"tokens:ids{suffix}"
    assert c.val.tolist() == ids[900:].tolist() and c.train.tolist() == ids[:900].tolist()
    x, y = data.train_batch(c, 4, 16, seed=0, step=0)
    assert x.max() < 1200 and torch.equal(x[:, 1:], y[:, :-1])


def test_token_files_are_checked(tmp_path):
    np.save(tmp_path / "neg.npy", np.array([3, -1, 2]))
    np.save(tmp_path / "flat.npy", np.zeros((2, 2), dtype=np.int32))
    for name, message in (("neg.npy", "negative"), ("flat.npy", "1-D")):
        with pytest.raises(ConfigError, match=message):
            data.vocab_size_for(block({"corpus": f"tokens:{tmp_path / name}"}))
    with pytest.raises(ConfigError) as err:
        data.validate_data_config(block({"corpus": f"tokens:{tmp_path / 'neg.npy'}", "tokenizer": "bpe"}))
    assert err.value.field == "data.tokenizer"


# ---------------------------------------------------------------- BPE


def test_bpe_round_trips_and_is_cached(austen_corpus, data_home, tmp_path, capfd):
    text = (austen_corpus / "austen.txt").read_bytes()[:300_000]
    text = text[: text.rindex(b"\n") + 1]  # whole lines: the file is then the corpus byte for byte
    (tmp_path / "austen-part.txt").write_bytes(text)
    cfg = {
        "corpus": f"text:{tmp_path / 'austen-part.txt'}",
        "tokenizer": "bpe",
        "bpe_vocab_size": 600,
        "eval_tokens": 1000,
    }
    c = data.load_corpus(block(cfg))
    assert "trained a 600-token BPE" in capfd.readouterr().err
    assert c.vocab_size == data.vocab_size_for(block(cfg)) == 600 and c.name == "text:austen-part.txt/bpe600"
    assert int(c.train.max()) < 600 and 2.0 < c.bytes_per_token < 4.0
    (cached,) = (data_home / "bpe").glob("*.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(cached))
    train_raw, val_raw = data._split_text(text, 0.05)
    assert tok.decode(c.train.tolist()).encode() == train_raw  # lossless: byte-level BPE
    assert tok.decode(c.val.tolist()).encode() == val_raw
    # A second process-level load reuses the file rather than training again.
    mtime = cached.stat().st_mtime_ns
    data._load_corpus.cache_clear()
    again = data.load_corpus(block(cfg))
    assert "trained" not in capfd.readouterr().err and cached.stat().st_mtime_ns == mtime
    assert torch.equal(again.train, c.train) and torch.equal(again.val, c.val)
    # The key is (training text, vocabulary): another size is another tokenizer.
    data.load_corpus(block({**cfg, "bpe_vocab_size": 700}))
    assert len(list((data_home / "bpe").glob("*.json"))) == 2


# ---------------------------------------------------------------- settings


def test_vocab_size_for():
    assert data.vocab_size_for(block({"corpus": "austen", "tokenizer": "bytes"})) == 256
    assert data.vocab_size_for(block({"corpus": "austen", "tokenizer": "bpe", "bpe_vocab_size": 4096})) == 4096


@pytest.mark.parametrize(
    "setting, field, allowed",
    [
        ({"corpus": "wiki"}, "data.corpus", "austen, text:PATH, tokens:PATH"),
        ({"corpus": "http:x"}, "data.corpus", "austen, text:PATH, tokens:PATH"),
        ({"corpus": "text:/no/such/file.txt"}, "data.corpus", "does not exist"),
        ({"corpus": "tokens:/no/such.npy"}, "data.corpus", ".npy or .bin"),
        ({"tokenizer": "chars"}, "data.tokenizer", "bytes, bpe"),
        ({"val_fraction": 0}, "data.val_fraction", "0 < val_fraction < 1"),
        ({"val_fraction": 1.0}, "data.val_fraction", "0 < val_fraction < 1"),
        ({"val_fraction": -0.1}, "data.val_fraction", "0 < val_fraction < 1"),
        ({"val_fraction": "0.1"}, "data.val_fraction", "0 < val_fraction < 1"),
        ({"bpe_vocab_size": 100}, "data.bpe_vocab_size", ">= 257"),
        ({"eval_tokens": 0}, "data.eval_tokens", "positive integer"),
        ({"eval_tokens": 1.5}, "data.eval_tokens", "positive integer"),
        ({"shuffle": True}, "data.shuffle", "corpus, tokenizer, bpe_vocab_size, val_fraction, eval_tokens"),
    ],
)
def test_bad_settings_name_the_field(setting, field, allowed):
    with pytest.raises(ConfigError) as err:
        data.validate_data_config(block(setting))
    assert err.value.field == field and allowed in str(err.value)
    with pytest.raises(ConfigError):  # and nothing is loaded first
        data.load_corpus(block(setting))
