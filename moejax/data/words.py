"""Word pools for the suites: pseudo-words for names and places, short curated lists for the rest.

The pseudo-word pool is generated once from a fixed seed (it is part of the data version, not of
a preset), and cut into disjoint slices, so a city never shares a word with a person or a company.
"""

from __future__ import annotations

import functools

from moejax.data import records

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")

MAJORS = (
    "Physics", "Chemistry", "Biology", "Mathematics", "History", "Economics", "Philosophy",
    "Linguistics", "Geology", "Astronomy", "Statistics", "Sociology", "Psychology", "Law",
    "Medicine", "Nursing", "Architecture", "Music", "Painting", "Sculpture", "Theater",
    "Journalism", "Accounting", "Finance", "Marketing", "Management", "Agriculture", "Forestry",
    "Ecology", "Genetics", "Neuroscience", "Pharmacy", "Dentistry", "Zoology", "Botany",
    "Oceanography", "Meteorology", "Anthropology", "Archaeology", "Geography", "Literature",
    "Poetry", "Classics", "Theology", "Education", "Robotics", "Electronics", "Aeronautics",
    "Metallurgy", "Mining", "Optics", "Acoustics", "Cryptography", "Logic", "Topology",
    "Algebra", "Nutrition", "Kinesiology", "Criminology", "Demography", "Cartography",
    "Photography", "Dance", "Design")

# Plural nouns naming the quantities of reasoning problems.
NOUNS = (
    "cats", "dogs", "pens", "cups", "jars", "hats", "bags", "keys", "eggs", "figs", "apples",
    "boxes", "coins", "books", "rings", "shoes", "socks", "bells", "lamps", "maps", "nuts",
    "pots", "rugs", "toys", "vans", "bikes", "cards", "desks", "drums", "forks", "gems", "kites",
    "mugs", "nails", "owls", "pears", "plums", "seeds", "tents", "vases")

_UNIVERSITY_FORMS = ("University of {}", "{} Institute", "{} College", "{} University")
_EMPLOYER_SUFFIXES = ("Labs", "Systems", "Group", "Works", "Foods", "Motors", "Bank", "Press",
                      "Energy", "Textiles", "Logistics", "Studios")

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "st", "tr", "sh", "th", "gl", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "k")

# Disjoint slices of the pseudo-word pool: purpose -> size (the largest cardinality it serves).
_POOL_SLICES = (("first_name", 1024), ("last_name", 4096), ("city", 1024), ("university", 1024),
                ("employer", 1024))


@functools.cache
def _pseudo_words() -> dict[str, tuple[str, ...]]:
  total = sum(size for _, size in _POOL_SLICES)
  gen = records.rng(0, "words/pseudo")
  seen: set[str] = set()
  ordered: list[str] = []
  while len(ordered) < total:
    word = "".join(
        _ONSETS[gen.integers(len(_ONSETS))] + _VOWELS[gen.integers(len(_VOWELS))]
        + _CODAS[gen.integers(len(_CODAS))] for _ in range(2))
    if word not in seen:
      seen.add(word)
      ordered.append(word.capitalize())
  pools, start = {}, 0
  for purpose, size in _POOL_SLICES:
    pools[purpose] = tuple(ordered[start:start + size])
    start += size
  return pools


def pool(purpose: str) -> tuple[str, ...]:
  """The pseudo-word slice for ``purpose`` (first_name, last_name, city, university, employer)."""
  return _pseudo_words()[purpose]


def values(kind: str, cardinality: int) -> tuple[str, ...]:
  """The first ``cardinality`` values of an attribute kind (city, university, major, employer)."""
  if kind == "major":
    source = MAJORS
  elif kind == "city":
    source = pool("city")
  elif kind == "university":
    source = tuple(_UNIVERSITY_FORMS[i % len(_UNIVERSITY_FORMS)].format(w)
                   for i, w in enumerate(pool("university")))
  elif kind == "employer":
    source = tuple(f"{w} {_EMPLOYER_SUFFIXES[i % len(_EMPLOYER_SUFFIXES)]}"
                   for i, w in enumerate(pool("employer")))
  else:
    raise ValueError(f"Unknown attribute kind {kind!r}")
  if cardinality > len(source):
    raise ValueError(f"{kind} supports at most {len(source)} values, asked for {cardinality}")
  return source[:cardinality]
