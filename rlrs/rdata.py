"""A reader for R's lazy-load databases (`NAME.rdx` + `NAME.rdb`), no R needed.

R packages store their data sets as a lazy-load database: the `.rdb` file is a
concatenation of records, each a 4-byte big-endian uncompressed length followed
by zlib data holding one object in R's XDR serialization format; the `.rdx`
index (gzip, or the same record framing) is a serialized list whose
`variables` entry maps each object name to its (offset, length) in the `.rdb`.

Only the part of the serialization format that data sets use is decoded:
vectors (character, list, integer, double, logical, raw, complex), pairlists
with tags and attributes, symbols, references and the common ALTREP classes.
Environments, closures and byte code are read as far as their structure goes,
so a whole database (a package's R code too) can be walked, but they are not
interpreted.
Values come back as plain Python: a character vector is a list of str (None
for NA), a list is an `RList` (a list carrying its names and attributes).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

# SEXP type codes (Rinternals.h) and serialization pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP = 9, 10, 13, 14, 15, 16
DOTSXP, VECSXP, EXPRSXP, BCODESXP, RAWSXP, S4SXP = 17, 19, 20, 21, 24, 25
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP = 238, 239, 240
BASEENV_SXP, EMPTYENV_SXP, BCREPREF, BCREPDEF = 241, 242, 243, 244
GENERICREFSXP, CLASSREFSXP, PERSISTSXP, PACKAGESXP, NAMESPACESXP = 245, 246, 247, 248, 249
BASENAMESPACE_SXP, MISSINGARG_SXP, UNBOUNDVALUE_SXP, GLOBALENV_SXP = 250, 251, 252, 253
NILVALUE_SXP, REFSXP = 254, 255
_SINGLETONS = {
    NILVALUE_SXP,
    EMPTYENV_SXP,
    BASEENV_SXP,
    GLOBALENV_SXP,
    UNBOUNDVALUE_SXP,
    MISSINGARG_SXP,
    BASENAMESPACE_SXP,
}
_LATIN1, _UTF8, _BYTES = 1 << 2, 1 << 3, 1 << 1  # CHARSXP encoding bits in `levels`
NA_INTEGER = -(2**31)


class RDataError(ValueError):
    """The bytes are not a (supported) R serialization."""


class RList(list):
    """An R generic vector or pairlist: a Python list plus R's names/attributes."""

    def __init__(self, items=(), names=None, attributes=None):
        super().__init__(items)
        self.names = names
        self.attributes = attributes or {}

    def as_dict(self) -> dict:
        if self.names is None:
            raise RDataError("this R list has no names")
        return dict(zip(self.names, self))


class Sym(str):
    """An R symbol (kept apart from character data)."""


class _Reader:
    def __init__(self, data: bytes, persistent=None):
        self.buf, self.pos, self.refs = memoryview(data), 0, []
        self.persistent = persistent  # hook for PERSISTSXP (lazy-load references)

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise RDataError("truncated R serialization")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints, upper and lower halves
            hi, lo = self.int(), self.int()
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        return n

    def header(self) -> None:
        if bytes(self.take(2)) != b"X\n":
            raise RDataError("only XDR (binary, big-endian) R serializations are supported")
        version = self.int()
        if version not in (2, 3):
            raise RDataError(f"R serialization version {version} is not supported (2 or 3)")
        self.int(), self.int()  # writer's and minimal reader's R versions
        if version == 3:
            self.take(self.int())  # native encoding name

    def attrs(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        pairs = self.item()
        return dict(zip(pairs.names, pairs)) if isinstance(pairs, RList) else {}

    def item(self):
        flags = self.int()
        kind, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in _SINGLETONS:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            # InStringVec: a zero, a length, then that many CHARSXPs (no STRSXP header).
            self.int()
            names = [self.item() for _ in range(self.int())]
            if kind == PERSISTSXP and self.persistent:
                value = self.persistent(names)
            else:
                value = ({PERSISTSXP: "persistent", PACKAGESXP: "package", NAMESPACESXP: "namespace"}[kind], names)
            self.refs.append(value)
            return value
        if kind == SYMSXP:
            sym = Sym(self.item() or "")
            self.refs.append(sym)
            return sym
        if kind == BCODESXP:
            reps = [None] * self.int()
            return _with_attrs(self._bytecode(reps), self.attrs(has_attr))
        if kind == ENVSXP:
            env = {}
            self.refs.append(env)  # registered before its contents: they may refer to it
            self.int()  # locked flag
            self.item()  # enclosing environment: not needed to read the values
            frame, hashtab = self.item(), self.item()
            for part in (frame, *(hashtab or [])):
                if isinstance(part, RList) and part.names:
                    env.update(zip(part.names, part))
            self.attrs(True)
            return env
        if kind in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP):
            # A pairlist is a chain of cells; read it iteratively, not recursively.
            items, names, attributes = RList(), [], {}
            while True:
                cell_attrs = self.attrs(has_attr)
                attributes = attributes or cell_attrs
                names.append(str(self.item()) if has_tag else "")
                items.append(self.item())
                flags = self.int()
                if flags & 0xFF not in (LISTSXP, LANGSXP, ATTRLISTSXP, ATTRLANGSXP):
                    self.pos -= 4
                    tail = self.item()  # NILVALUE for a proper list (or a closure body)
                    if tail is not None:
                        items.append(tail)
                        names.append("")
                    break
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
            items.names = names if any(names) else None
            items.attributes = attributes
            return items
        if kind == ALTREP_SXP:
            info, state, attributes = self.item(), self.item(), self.item()
            value = self._altrep(str(info[0]), state)
            if isinstance(attributes, RList) and attributes.names:
                value = _with_attrs(value, dict(zip(attributes.names, attributes)))
            return value
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = bytes(self.take(n))
            if levels & _LATIN1:
                return raw.decode("latin-1")
            return raw.decode("utf-8", errors="strict" if levels & _UTF8 else "replace")
        if kind in (STRSXP, VECSXP, EXPRSXP):
            value = RList(self.item() for _ in range(self.length()))
            if kind == STRSXP:
                value = list(value)
        elif kind in (INTSXP, LGLSXP):
            n = self.length()
            value = [
                None if v == NA_INTEGER else (bool(v) if kind == LGLSXP else v)
                for v in struct.unpack(f">{n}i", self.take(4 * n))
            ]
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == CPLXSXP:
            n = self.length()
            flat = struct.unpack(f">{2 * n}d", self.take(16 * n))
            value = [complex(flat[i], flat[i + 1]) for i in range(0, 2 * n, 2)]
        elif kind == RAWSXP:
            value = bytes(self.take(self.length()))
        elif kind == S4SXP:
            value = RList()
        else:
            # External pointers, weak references, ...: never part of a data set.
            raise RDataError(f"R object type {kind} is not supported by this reader")
        return _with_attrs(value, self.attrs(has_attr))

    def _bytecode(self, reps: list) -> RList:
        """A byte-compiled closure body (R's ReadBC1): code vector, then constants.
        Kept only so that whole databases of functions can be walked."""
        code, consts = self.item(), RList()
        for _ in range(self.int()):
            kind = self.int()
            consts.append(self._bytecode(reps) if kind == BCODESXP else self._bc_lang(kind, reps))
        return RList([code, consts])

    def _bc_lang(self, kind: int, reps: list):
        """Language objects inside byte code, with their own sharing table (ReadBCLang)."""
        if kind == BCREPREF:
            return reps[self.int()]
        if kind not in (BCREPDEF, LANGSXP, LISTSXP, ATTRLANGSXP, ATTRLISTSXP):
            return self.item()  # `kind` was only a padding marker before an ordinary item
        slot = -1
        if kind == BCREPDEF:
            slot, kind = self.int(), self.int()
        cell = RList()
        if slot >= 0:
            reps[slot] = cell
        if kind in (ATTRLANGSXP, ATTRLISTSXP):
            cell.attributes = {"attributes": self.item()}
        tag = self.item()
        cell.extend([self._bc_lang(self.int(), reps), self._bc_lang(self.int(), reps)])
        cell.names = [str(tag or ""), ""]
        return cell

    def _altrep(self, cls: str, state):
        if cls == "compact_intseq":  # state: (length, start, step) as doubles
            n, start, step = (int(v) for v in state)
            return list(range(start, start + n * step, step))
        if cls == "compact_realseq":
            n, start, step = state
            return [start + i * step for i in range(int(n))]
        if cls == "deferred_string":  # state: (numeric vector, info): strings made on demand
            return [None if v is None else v if isinstance(v, str) else f"{v:.15g}" for v in state[0]]
        if cls.startswith("wrap_"):  # state: list(wrapped vector, metadata)
            return state[0]
        raise RDataError(f"ALTREP class {cls!r} is not supported by this reader")


def _with_attrs(value, attributes: dict):
    if not attributes:
        return value
    if not isinstance(value, RList):
        value = RList(value)
    value.attributes = attributes
    names = attributes.get("names")
    value.names = list(names) if names is not None else value.names
    return value


def unserialize(data: bytes, persistent=None):
    """Decode one object from R's XDR serialization (what saveRDS writes, uncompressed)."""
    reader = _Reader(data, persistent)
    reader.header()
    return reader.item()


def _decompress_record(record: bytes) -> bytes:
    """One lazy-load record: 4-byte big-endian length, then (by default) zlib data;
    R's `compress = 2/3` databases add a type byte: Z(lib), 2 (bzip2), X(z), 0 (none)."""
    size = struct.unpack(">I", record[:4])[0]
    body = record[4:]
    if body[:1] in (b"Z", b"2", b"X", b"0"):  # a zlib stream starts with b"x", never these
        method, body = body[:1], body[1:]
        body = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[method](body)
    else:
        body = zlib.decompress(body)
    if len(body) != size:
        raise RDataError(f"lazy-load record: expected {size} bytes, decompressed {len(body)}")
    return body


class LazyLoadDB:
    """`LazyLoadDB("path/to/Rdata")` reads `Rdata.rdx` and the objects of `Rdata.rdb`."""

    def __init__(self, base: str | Path):
        base = Path(base)
        self.rdb = base.with_name(base.name + ".rdb")
        raw = base.with_name(base.name + ".rdx").read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else _decompress_record(raw)
        index = unserialize(raw).as_dict()
        self.variables = index["variables"].as_dict()
        self.references = index["references"].as_dict() if index["references"] else {}
        self._resolved: dict = {}  # reference name -> decoded value, shared by all reads

    def names(self) -> list[str]:
        return list(self.variables)

    def _record(self, key) -> bytes:
        offset, length = key
        with open(self.rdb, "rb") as f:
            f.seek(offset)
            return _decompress_record(f.read(length))

    def __getitem__(self, name: str):
        if name not in self.variables:
            raise KeyError(f"{name!r} is not in {self.rdb} (it has: {', '.join(self.variables)})")
        # References (shared environments) are stored as records of their own.
        return unserialize(self._record(self.variables[name]), self._reference)

    def _reference(self, names):
        name = names[0]
        if name not in self._resolved:
            self._resolved[name] = None  # an environment that refers back to itself sees None
            key = self.references.get(name)
            if key is not None:
                self._resolved[name] = unserialize(self._record(key), self._reference)
        return self._resolved[name]
