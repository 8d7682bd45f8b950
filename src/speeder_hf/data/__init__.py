"""Data for speeder_hf: loaders of the public raw formats into a `RecDataset`, the train/validation/test split
with fixed evaluation candidates, and per-epoch training candidates."""

from .amazon import load_amazon_2014, load_amazon_2023
from .candidates import CandidateSampler, CandidateSamplingDataset, sample_rng
from .images import IMAGE_EXTENSIONS, attach_images
from .llara import load_llara, load_llara_samples
from .movielens import load_movielens, movielens_posters
from .named import load_dataset_by_name, shared_data_dir
from .reading import DataFormatError
from .rec_dataset import ItemInfo, RecDataset, compose_text
from .recbole import load_recbole
from .s3rec import load_s3rec
from .split import STRATEGIES, STRATEGY_TARGETS, last_training_rows, make_split, training_sequences

__all__ = [
    "IMAGE_EXTENSIONS",
    "STRATEGIES",
    "STRATEGY_TARGETS",
    "CandidateSampler",
    "CandidateSamplingDataset",
    "DataFormatError",
    "ItemInfo",
    "RecDataset",
    "attach_images",
    "compose_text",
    "load_amazon_2014",
    "load_amazon_2023",
    "load_dataset_by_name",
    "load_llara",
    "load_llara_samples",
    "load_movielens",
    "load_recbole",
    "load_s3rec",
    "last_training_rows",
    "make_split",
    "movielens_posters",
    "sample_rng",
    "shared_data_dir",
    "training_sequences",
]
