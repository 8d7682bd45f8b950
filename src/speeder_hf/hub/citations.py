"""The works a model card cites, and how it names and cites the dataset a model was trained on.

[`dataset_info`] maps a dataset name (`"Beauty"`, `"movielens-100k"`, ...) to its [`DatasetInfo`]: the name the card
prints, the Hub slug of its `datasets:` entry and model-index, its BibTeX and its terms of use.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEEDER_CITATION = """@article{zhong2025speeder,
  title   = {A Remarkably Efficient Paradigm to Multimodal Large Language Models for Sequential Recommendation},
  author  = {Zhong and Su and Yang and Ma and Zheng and Chen},
  journal = {arXiv preprint arXiv:2511.05885},
  year    = {2025}
}"""
SASREC_CITATION = """@inproceedings{kang2018sasrec,
  title     = {Self-Attentive Sequential Recommendation},
  author    = {Kang, Wang-Cheng and McAuley, Julian},
  booktitle = {IEEE International Conference on Data Mining (ICDM)},
  year      = {2018}
}"""
AMAZON_CITATIONS = """@inproceedings{mcauley2015image,
  title     = {Image-Based Recommendations on Styles and Substitutes},
  author    = {McAuley, Julian and Targett, Christopher and Shi, Qinfeng and van den Hengel, Anton},
  booktitle = {Proceedings of the 38th International ACM SIGIR Conference on Research and Development in
               Information Retrieval},
  year      = {2015}
}
@inproceedings{he2016ups,
  title     = {Ups and Downs: Modeling the Visual Evolution of Fashion Trends with One-Class Collaborative Filtering},
  author    = {He, Ruining and McAuley, Julian},
  booktitle = {Proceedings of the 25th International Conference on World Wide Web (WWW)},
  year      = {2016}
}"""
MOVIELENS_CITATION = """@article{harper2015movielens,
  title   = {The MovieLens Datasets: History and Context},
  author  = {Harper, F. Maxwell and Konstan, Joseph A.},
  journal = {ACM Transactions on Interactive Intelligent Systems},
  volume  = {5},
  number  = {4},
  year    = {2015}
}"""


@dataclass(frozen=True)
class DatasetInfo:
    """How a card names and cites a dataset: `pretty` name, `slug` (the `datasets:` entry and model-index type),
    `citations` (BibTeX) and `terms` (the data's terms of use, for the limitations)."""

    pretty: str
    slug: str
    citations: str
    terms: str


_AMAZON_TERMS = "Amazon review data (McAuley et al., UCSD) is distributed for research use; cite the papers below."
KNOWN_DATASETS = {
    "beauty": DatasetInfo("Amazon Beauty (2014, 5-core)", "amazon-beauty-2014-5core", AMAZON_CITATIONS, _AMAZON_TERMS),
    "sports": DatasetInfo(
        "Amazon Sports and Outdoors (2014, 5-core)", "amazon-sports-2014-5core", AMAZON_CITATIONS, _AMAZON_TERMS
    ),
    "movielens": DatasetInfo(
        "MovieLens-100K",
        "movielens-100k",
        MOVIELENS_CITATION,
        "MovieLens data (GroupLens) is for research use only, without endorsement, and may not be redistributed.",
    ),
    "steam": DatasetInfo(
        "Steam (LLaRA split)",
        "steam-llara",
        SASREC_CITATION,
        "The Steam data (Kang & McAuley, ICDM 2018) is a research dataset.",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The card description of a dataset, matched by name (`"Beauty"`, `"movielens-100k"`, ...).

    Raises:
        ValueError: for a dataset the card generator cannot cite; add it to `KNOWN_DATASETS`.
    """
    key = name.lower()
    matches = [info for word, info in KNOWN_DATASETS.items() if word in key or (word == "movielens" and "ml-" in key)]
    if not matches:
        raise ValueError(
            f"No card description for dataset {name!r}: add a DatasetInfo for it to "
            f"speeder_hf.hub.citations.KNOWN_DATASETS (known: {sorted(KNOWN_DATASETS)})."
        )
    return matches[0]


__all__ = [
    "AMAZON_CITATIONS",
    "KNOWN_DATASETS",
    "MOVIELENS_CITATION",
    "SASREC_CITATION",
    "SPEEDER_CITATION",
    "DatasetInfo",
    "dataset_info",
]
