#!/usr/bin/env python3
"""Writes catalog-graph.txt: the dependency set the catalog's tests and
benchmarks index, one package a line, `name|dep1,dep2,...`.

What it imitates, and why. A package catalog is judged on real-world
dependency sets, and the best-known one is Homebrew's: a few thousand
formulae and their runtime dependencies. We cannot download it here, so this
script builds a set of the same shape, deterministically (fixed seed, no
set iteration, the standard library only):

- about 3,200 names: some 220 real formula names with their dependencies
  written out by hand (pkg-config, openssl@3, gettext, glib, zlib,
  python@3.12, cairo, gtk+3, libsigc++, c-ares, node, qt@5, ffmpeg, gdal,
  ...), the rest made up in Homebrew's style: lowercase letters and digits,
  `-`, `+` (`foo++`, `gtk+`-like), `@` versions (`name@2`, `name@1.4`) of
  other names, `lib` prefixes, `-cli`/`-utils` suffixes;
- ten valid non-ASCII names (Latin with diacritics, Greek, Cyrillic, CJK,
  Hangul), each a dependency of at least one other name, so clients
  exercise UTF-8 in both fields;
- dependency counts as Homebrew's: most formulae have 0 to 4, a long tail
  reaches about 40 (ffmpeg, gdal, and made-up ones);
- popularity as Homebrew's: a few dozen libraries (pkg-config, openssl@3,
  gettext, glib, zlib, python@3.12, ...) have hundreds of dependents, the
  rest few or none; made-up names choose their dependencies among those
  popular libraries by a Zipf-like weight, and among earlier made-up names
  by preferential attachment (more dependents, more likely chosen);
- dependency depth (edges on the longest chain down to a package with no
  dependencies) capped at 15; the script prints the deepest and how many
  names sit at each depth;
- acyclic (a package only depends on names made before it), every
  dependency is a name of the set, names unique, no name repeated within a
  line, dependencies sorted as Homebrew lists them;
- lines in a shuffled order, not a topological one: a client that indexes
  the file from top to bottom gets FAIL for many lines and must retry them,
  as a real client of a catalog would.

Run `python3 testkit/data/catalog-graph.py` from the repository's root (or
anywhere: it writes beside itself); it prints a summary of the shape on
standard error. The output is committed and must stay under about 150 KB.
"""

import os
import random
import sys

SEED = 20240917
# Made-up names generated after the hand-written ones.
GENERATED = 2990
MAX_DEPTH = 15
# The longest dependency list of a made-up name.
MAX_DEPS = 40

# Real formulae with (simplified) runtime dependencies, each after its own
# dependencies.
REAL = [
    ("ca-certificates", []),
    ("pkg-config", []),
    ("zlib", []),
    ("xz", []),
    ("lz4", []),
    ("bzip2", []),
    ("zstd", ["lz4", "xz", "zlib"]),
    ("m4", []),
    ("autoconf", ["m4"]),
    ("automake", ["autoconf"]),
    ("libtool", ["m4"]),
    ("gettext", []),
    ("libunistring", []),
    ("libidn2", ["gettext", "libunistring"]),
    ("libffi", []),
    ("pcre2", []),
    ("ncurses", []),
    ("readline", []),
    ("sqlite", ["readline", "zlib"]),
    ("expat", []),
    ("openssl@3", ["ca-certificates"]),
    ("openssl@1.1", ["ca-certificates"]),
    ("libyaml", []),
    ("mpdecimal", []),
    ("gdbm", []),
    ("berkeley-db@5", []),
    ("python@3.12", ["mpdecimal", "openssl@3", "pkg-config", "sqlite", "xz"]),
    ("python@3.11", ["mpdecimal", "openssl@3", "pkg-config", "sqlite", "xz"]),
    ("python@3.13", ["mpdecimal", "openssl@3", "pkg-config", "sqlite", "xz"]),
    ("ninja", []),
    ("meson", ["ninja", "python@3.12"]),
    ("cmake", []),
    ("gmp", []),
    ("mpfr", ["gmp"]),
    ("libmpc", ["gmp", "mpfr"]),
    ("isl", ["gmp"]),
    ("gcc", ["gmp", "isl", "libmpc", "mpfr", "zstd"]),
    ("openblas", ["gcc"]),
    ("numpy", ["openblas", "python@3.12"]),
    ("glib", ["gettext", "libffi", "pcre2", "pkg-config"]),
    ("libpng", ["zlib"]),
    ("jpeg-turbo", []),
    ("giflib", []),
    ("libtiff", ["jpeg-turbo", "xz", "zstd"]),
    ("webp", ["giflib", "jpeg-turbo", "libpng", "libtiff"]),
    ("little-cms2", ["jpeg-turbo", "libtiff"]),
    ("openjpeg", ["libpng", "libtiff", "little-cms2"]),
    ("freetype", ["libpng"]),
    ("fontconfig", ["freetype"]),
    ("xorgproto", []),
    ("libxau", ["xorgproto"]),
    ("libxdmcp", ["xorgproto"]),
    ("libxcb", ["libxau", "libxdmcp"]),
    ("libx11", ["libxcb", "xorgproto"]),
    ("libxext", ["libx11", "xorgproto"]),
    ("libxrender", ["libx11", "xorgproto"]),
    ("libxfixes", ["libx11"]),
    ("libxi", ["libx11", "libxext", "libxfixes"]),
    ("libxtst", ["libx11", "libxext", "libxi"]),
    ("pixman", []),
    ("lzo", []),
    ("cairo", ["fontconfig", "freetype", "glib", "libpng", "libx11", "libxcb",
               "libxext", "libxrender", "lzo", "pixman"]),
    ("icu4c@76", []),
    ("graphite2", []),
    ("harfbuzz", ["cairo", "freetype", "glib", "graphite2", "icu4c@76"]),
    ("fribidi", []),
    ("pango", ["cairo", "fontconfig", "freetype", "fribidi", "glib", "harfbuzz"]),
    ("gdk-pixbuf", ["glib", "jpeg-turbo", "libpng", "libtiff"]),
    ("gobject-introspection", ["cairo", "glib", "libffi", "pkg-config", "python@3.12"]),
    ("dbus", ["expat"]),
    ("at-spi2-core", ["dbus", "gettext", "glib", "libx11", "libxi", "libxtst"]),
    ("libepoxy", []),
    ("hicolor-icon-theme", []),
    ("gsettings-desktop-schemas", ["glib"]),
    ("gtk+3", ["at-spi2-core", "cairo", "fribidi", "gdk-pixbuf", "gettext", "glib",
               "gsettings-desktop-schemas", "harfbuzz", "hicolor-icon-theme",
               "libepoxy", "pango"]),
    ("gtk+", ["cairo", "gdk-pixbuf", "gettext", "glib", "hicolor-icon-theme", "pango"]),
    ("libsigc++", []),
    ("libsigc++@2", []),
    ("glibmm", ["glib", "libsigc++"]),
    ("cairomm", ["cairo", "libsigc++"]),
    ("pangomm", ["cairomm", "glibmm", "pango"]),
    ("gtkmm3", ["cairomm", "glibmm", "gtk+3", "pangomm"]),
    ("c-ares", []),
    ("libnghttp2", []),
    ("libuv", []),
    ("brotli", []),
    ("node", ["brotli", "c-ares", "icu4c@76", "libnghttp2", "libuv", "openssl@3"]),
    ("node@20", ["brotli", "c-ares", "icu4c@76", "libnghttp2", "libuv", "openssl@3"]),
    ("node@18", ["brotli", "c-ares", "icu4c@76", "libnghttp2", "libuv", "openssl@3"]),
    ("yarn", ["node"]),
    ("libssh2", ["openssl@3"]),
    ("rtmpdump", ["openssl@3"]),
    ("curl", ["brotli", "libidn2", "libnghttp2", "libssh2", "openssl@3", "rtmpdump", "zstd"]),
    ("git", ["gettext", "pcre2"]),
    ("libevent", ["openssl@3"]),
    ("utf8proc", []),
    ("tmux", ["libevent", "ncurses", "utf8proc"]),
    ("libxml2", []),
    ("libxslt", ["libxml2"]),
    ("boost", ["icu4c@76", "xz", "zstd"]),
    ("abseil", []),
    ("protobuf", ["abseil"]),
    ("re2", ["abseil"]),
    ("grpc", ["abseil", "c-ares", "openssl@3", "protobuf", "re2"]),
    ("lua", []),
    ("lua@5.3", []),
    ("luajit", []),
    ("perl", ["berkeley-db@5", "gdbm"]),
    ("ruby", ["libyaml", "openssl@3"]),
    ("go", []),
    ("z3", []),
    ("llvm", ["xz", "z3", "zstd"]),
    ("libgit2", ["libssh2"]),
    ("rust", ["libgit2", "libssh2", "llvm", "openssl@3", "pkg-config", "zstd"]),
    ("libogg", []),
    ("libvorbis", ["libogg"]),
    ("flac", ["libogg"]),
    ("opus", []),
    ("lame", []),
    ("x264", []),
    ("x265", []),
    ("libvpx", []),
    ("dav1d", []),
    ("libvmaf", []),
    ("aom", ["libvmaf"]),
    ("sdl2", []),
    ("svt-av1", []),
    ("srt", ["openssl@3"]),
    ("speex", []),
    ("theora", ["libogg", "libvorbis"]),
    ("libunibreak", []),
    ("libass", ["fontconfig", "freetype", "fribidi", "harfbuzz", "libunibreak"]),
    ("snappy", []),
    ("libbluray", ["fontconfig", "freetype", "libxml2"]),
    ("libsodium", []),
    ("zeromq", ["libsodium"]),
    ("nettle", ["gmp"]),
    ("libtasn1", []),
    ("p11-kit", ["ca-certificates", "libtasn1"]),
    ("unbound", ["libevent", "libnghttp2", "openssl@3"]),
    ("gnutls", ["ca-certificates", "gmp", "libidn2", "libtasn1", "libunistring",
                "nettle", "p11-kit", "unbound"]),
    ("leptonica", ["giflib", "jpeg-turbo", "libpng", "libtiff", "openjpeg", "webp"]),
    ("libb2", []),
    ("libarchive", ["libb2", "lz4", "xz", "zstd"]),
    ("tesseract", ["cairo", "fontconfig", "glib", "harfbuzz", "icu4c@76", "leptonica",
                   "libarchive", "pango"]),
    ("frei0r", []),
    ("libsoxr", []),
    ("libvidstab", []),
    ("opencore-amr", []),
    ("rav1e", []),
    ("zimg", []),
    ("libsamplerate", []),
    ("rubberband", ["libsamplerate"]),
    ("ffmpeg", ["aom", "dav1d", "flac", "fontconfig", "freetype", "frei0r", "gnutls",
                "harfbuzz", "lame", "libass", "libbluray", "libsoxr", "libvidstab",
                "libvmaf", "libvorbis", "libvpx", "opencore-amr", "openjpeg", "opus",
                "rav1e", "rubberband", "sdl2", "snappy", "speex", "srt", "svt-av1",
                "tesseract", "theora", "webp", "x264", "x265", "xz", "zeromq", "zimg"]),
    ("double-conversion", []),
    ("hunspell", []),
    ("jasper", ["jpeg-turbo"]),
    ("md4c", []),
    ("qt@5", ["freetype", "glib", "icu4c@76", "jpeg-turbo", "libpng", "pcre2", "zstd"]),
    ("qt", ["brotli", "dbus", "double-conversion", "freetype", "glib", "harfbuzz",
            "hunspell", "icu4c@76", "jasper", "jpeg-turbo", "libb2", "libpng", "libtiff",
            "md4c", "openssl@3", "pcre2", "webp", "zstd"]),
    ("openjdk", ["fontconfig", "freetype", "giflib", "harfbuzz", "jpeg-turbo",
                 "libpng", "little-cms2"]),
    ("libaec", []),
    ("hdf5", ["gcc", "libaec", "pkg-config"]),
    ("netcdf", ["hdf5"]),
    ("geos", []),
    ("proj", ["curl", "libtiff", "sqlite"]),
    ("freexl", []),
    ("librttopo", ["geos"]),
    ("minizip", ["zlib"]),
    ("libspatialite", ["freexl", "geos", "librttopo", "libxml2", "minizip", "proj", "sqlite"]),
    ("c-blosc", []),
    ("cfitsio", []),
    ("epsilon", []),
    ("highway", []),
    ("jpeg-xl", ["brotli", "giflib", "highway", "imath", "jpeg-turbo", "libpng",
                 "little-cms2", "openexr", "webp"]),
    ("imath", []),
    ("openexr", ["imath", "libdeflate"]),
    ("libdeflate", []),
    ("json-c", []),
    ("libgeotiff", ["jpeg-turbo", "libtiff", "proj"]),
    ("libde265", []),
    ("libheif", ["aom", "jpeg-turbo", "libde265", "libpng", "libtiff", "shared-mime-info",
                 "webp", "x265"]),
    ("shared-mime-info", ["glib"]),
    ("minizip-ng", ["xz", "zlib", "zstd"]),
    ("uriparser", []),
    ("libkml", ["boost", "minizip", "uriparser"]),
    ("krb5", ["openssl@3"]),
    ("libpq", ["icu4c@76", "krb5", "openssl@3"]),
    ("poppler", ["cairo", "fontconfig", "freetype", "gettext", "glib", "gpgme",
                 "jpeg-turbo", "libpng", "libtiff", "little-cms2", "nspr", "nss",
                 "openjpeg"]),
    ("libgpg-error", ["gettext"]),
    ("libassuan", ["libgpg-error"]),
    ("gpgme", ["libassuan", "libgpg-error"]),
    ("nspr", []),
    ("nss", ["nspr"]),
    ("qhull", []),
    ("unixodbc", ["libtool"]),
    ("xerces-c", []),
    ("gdal", ["c-blosc", "cfitsio", "epsilon", "expat", "freexl", "geos", "giflib",
              "hdf5", "jpeg-turbo", "jpeg-xl", "json-c", "libaec", "libarchive",
              "libdeflate", "libgeotiff", "libheif", "libkml", "libpng", "libpq",
              "libspatialite", "libtiff", "libxml2", "lz4", "netcdf", "numpy",
              "openexr", "openjpeg", "openssl@3", "pcre2", "poppler", "proj",
              "python@3.12", "qhull", "sqlite", "unixodbc", "webp", "xerces-c",
              "xz", "zstd"]),
    ("ghostscript", ["fontconfig", "freetype", "jbig2dec", "jpeg-turbo", "libidn",
                     "libpng", "libtiff", "little-cms2", "openjpeg"]),
    ("jbig2dec", []),
    ("libidn", []),
    ("liblqr", ["glib"]),
    ("libraw", ["jasper", "jpeg-turbo", "little-cms2"]),
    ("imagemagick", ["fontconfig", "freetype", "ghostscript", "jpeg-turbo", "jpeg-xl",
                     "libheif", "liblqr", "libpng", "libraw", "libtiff", "libtool",
                     "little-cms2", "openexr", "openjpeg", "webp", "xz", "zstd"]),
]

# The libraries made-up names depend on most, most popular first (weight
# 1 / rank^ZIPF). Their own dependencies are above.
POPULAR = [
    "pkg-config", "openssl@3", "gettext", "glib", "zlib", "python@3.12", "libpng",
    "xz", "zstd", "sqlite", "readline", "freetype", "jpeg-turbo", "cmake",
    "ncurses", "libtiff", "icu4c@76", "cairo", "libffi", "pcre2", "gmp", "boost",
    "libyaml", "curl", "qt@5", "gtk+3", "libx11", "node", "libevent", "protobuf",
    "abseil", "lua", "fontconfig", "libxml2", "harfbuzz", "python@3.13", "qt",
    "libuv", "c-ares", "go", "rust", "libsodium", "perl", "ruby",
]
ZIPF = 0.5
# Probability that a dependency of a made-up name is one of POPULAR.
P_POPULAR = 0.7

NON_ASCII = [
    "café", "naïve-bayes", "zürich-tz", "smørrebrød", "łódź-maps", "señal",
    "ελληνικά-fonts", "кириллица", "日本語-input", "한글-fonts",
]

FRAGMENTS = [
    "gl", "gtk", "x", "xml", "json", "yaml", "toml", "ssl", "ssh", "zip", "png",
    "jpeg", "mp3", "ogg", "sdl", "tk", "db", "sql", "http", "ftp", "dns", "net",
    "git", "vim", "tex", "doc", "font", "audio", "video", "image", "crypt", "hash",
    "lz", "snap", "proto", "rpc", "kube", "cloud", "term", "shell", "fs", "fuse",
    "usb", "pci", "blue", "wifi", "geo", "map", "math", "blas", "fft", "graph",
    "plot", "chart", "tui", "kit", "core", "base", "util", "mail", "irc", "chat",
    "web", "wasm", "pdf", "ps", "svg", "midi", "wav", "flac", "cd", "iso", "tar",
    "arch", "mono", "py", "perl", "ruby", "lua", "go", "node", "java", "scala",
    "hs", "ml", "lisp", "scheme", "erl", "elixir", "dart", "swift", "zig",
]
CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
SUFFIXES = [
    "cli", "utils", "tools", "server", "client", "ng", "ui", "doc", "rs",
    "go", "py", "js", "lite", "extra", "data", "daemon", "proxy", "sync",
]


def syllables(rng, count):
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(count))


def word(rng):
    """A short word: a fragment, a made-up syllable run, or both."""
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(FRAGMENTS) + syllables(rng, rng.randint(1, 2))
    if roll < 0.55:
        return rng.choice(FRAGMENTS) + rng.choice(FRAGMENTS)
    text = syllables(rng, rng.randint(2, 3))
    if rng.random() < 0.3:
        text = text[:-1]
    return text


def made_up_name(rng, existing):
    """A Homebrew-style name; `existing` (a list) feeds `@` versions."""
    roll = rng.random()
    if roll < 0.07 and existing:
        base = rng.choice(existing)
        if "@" not in base:
            major = rng.randint(1, 24)
            if rng.random() < 0.4:
                return f"{base}@{major}.{rng.randint(0, 12)}"
            return f"{base}@{major}"
    if roll < 0.30:
        return "lib" + word(rng)
    if roll < 0.44:
        return f"{word(rng)}-{rng.choice(SUFFIXES)}"
    if roll < 0.52:
        return f"{word(rng)}-{word(rng)}"
    if roll < 0.58:
        return f"{rng.choice('cdgjkrsx')}-{word(rng)}"
    if roll < 0.66:
        return f"{word(rng)}{rng.randint(2, 9) if rng.random() < 0.7 else rng.randint(10, 999)}"
    if roll < 0.70:
        return word(rng) + ("++" if rng.random() < 0.6 else "mm")
    if roll < 0.72:
        return word(rng) + "+"
    return word(rng)


def dependency_count(rng):
    """0-4 mostly, then a tail falling as k^-2 up to MAX_DEPS."""
    roll = rng.random()
    for k, p in enumerate([0.23, 0.25, 0.18, 0.12, 0.08]):
        if roll < p:
            return k
        roll -= p
    tail = list(range(5, MAX_DEPS + 1))
    return rng.choices(tail, weights=[k ** -2.0 for k in tail])[0]


def main():
    rng = random.Random(SEED)
    deps = {}  # name -> sorted list; insertion order is creation order
    depth = {}
    dependents = {}

    def add(name, chosen):
        assert name not in deps, name
        for d in chosen:
            assert d in deps, (name, d)
        deps[name] = sorted(chosen)
        depth[name] = 1 + max((depth[d] for d in chosen), default=-1)
        dependents[name] = 0
        for d in chosen:
            dependents[d] += 1

    # A few hand-written entries name a dependency written further down;
    # take them in passes, in an order that satisfies every one.
    pending = list(REAL)
    while pending:
        later = []
        for name, chosen in pending:
            if all(d in deps for d in chosen):
                add(name, chosen)
            else:
                later.append((name, chosen))
        assert len(later) < len(pending), [n for n, _ in later]
        pending = later

    popular_weights = [1 / (rank + 1) ** ZIPF for rank in range(len(POPULAR))]
    made_up = []
    owed = []
    non_ascii_at = sorted(rng.sample(range(200, GENERATED - 200), len(NON_ASCII)))
    total = GENERATED + len(NON_ASCII)
    for i in range(total):
        if non_ascii_at and i >= non_ascii_at[0]:
            non_ascii_at.pop(0)
            name = NON_ASCII[len(NON_ASCII) - len(non_ascii_at) - 1]
        else:
            name = made_up_name(rng, made_up)
            attempts = 0
            while name in deps:
                attempts += 1
                assert attempts < 1000
                name = made_up_name(rng, made_up)
        want = dependency_count(rng)
        chosen = []
        if owed and want > 0:
            # The next name with dependencies takes the last non-ASCII
            # name as one of them, so dependency lists carry UTF-8 too.
            chosen.append(owed.pop())
        attempts = 0
        while len(chosen) < want and attempts < 20 * want + 20:
            attempts += 1
            if not made_up or rng.random() < P_POPULAR:
                candidate = rng.choices(POPULAR, weights=popular_weights)[0]
            else:
                # Preferential attachment among earlier made-up names, with
                # recent ones favoured a little, which builds deeper chains.
                window = made_up[-400:] if rng.random() < 0.3 else made_up
                candidate = rng.choices(
                    window, weights=[1 + dependents[n] for n in window]
                )[0]
            if candidate in chosen or depth[candidate] + 1 > MAX_DEPTH:
                continue
            chosen.append(candidate)
        add(name, chosen)
        made_up.append(name)
        if name in NON_ASCII:
            owed.append(name)

    names = list(deps)
    rng.shuffle(names)
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "catalog-graph.txt")
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for name in names:
            f.write(f"{name}|{','.join(deps[name])}\n")

    counts = sorted(len(d) for d in deps.values())
    top = sorted(dependents.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
    by_depth = {}
    for d in depth.values():
        by_depth[d] = by_depth.get(d, 0) + 1
    print(f"{len(names)} names, {sum(counts)} edges, {os.path.getsize(out)} bytes", file=sys.stderr)
    print(
        "dependencies: 0-4 for {:.0%}, median {}, max {}".format(
            sum(1 for c in counts if c <= 4) / len(counts), counts[len(counts) // 2], counts[-1]
        ),
        file=sys.stderr,
    )
    print(
        "names with >= 100 dependents: {}".format(sum(1 for v in dependents.values() if v >= 100)),
        file=sys.stderr,
    )
    print("most depended on: " + ", ".join(f"{n} {c}" for n, c in top), file=sys.stderr)
    print(
        "names by depth: " + ", ".join(f"{d}: {by_depth[d]}" for d in sorted(by_depth)),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
