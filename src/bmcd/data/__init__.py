"""Datasets of single-cell images: discovery, subject ids, splits and balancing.

A :class:`Dataset` is a list of image files with a label each (1 = ``"all"``, the
leukemic class; 0 = ``"hem"``, normal) and the subject (patient) each image came from.
:func:`load_dataset` recognises the usual ways C-NMC 2019 is laid out on disk:

(a) class folders ``ROOT/{all,hem}/`` (searched recursively);
(b) the Kaggle copy ``ROOT/C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/``, or any
    folder holding ``fold_*`` folders;
(c) pre-split folders ``ROOT/{training_set,validation_set,test_set}/{all,hem}/``
    (the split is kept in :attr:`Dataset.given_split`, see :func:`split_given`);
(d) a CSV manifest with path and label columns, including the official C-NMC
    preliminary-test label file ``Patient_ID,new_names,labels``.

Images of one subject are strongly correlated (same slide, same stain), so the honest
split is by subject (:func:`split_by_subject`); :func:`split_random` is kept only to
show how much an image-level split flatters a model.
"""

from __future__ import annotations

from ..artifact import CLASSES
from ._balance import apply_transform, balance_augment, class_weights
from ._dataset import Dataset
from ._discovery import load_dataset, resolve_image_paths
from ._files import is_image_file, iter_image_files
from ._folds import LINKED_SUBJECTS, linked_subjects_of, subject_folds, subject_groups
from ._names import LAYOUTS, TRANSFORMS, parse_label, parse_subject
from ._preprocess_folder import FolderResult, preprocess_folder
from ._splits import (
    SPLIT_METHODS,
    Split,
    split_by_subject,
    split_dataset,
    split_given,
    split_random,
)
from ._tta import TTA_VIEWS, tta_views

__all__ = [
    "CLASSES",
    "TRANSFORMS",
    "LAYOUTS",
    "Dataset",
    "Split",
    "parse_subject",
    "parse_label",
    "load_dataset",
    "split_by_subject",
    "split_random",
    "split_given",
    "split_dataset",
    "SPLIT_METHODS",
    "subject_folds",
    "subject_groups",
    "LINKED_SUBJECTS",
    "linked_subjects_of",
    "balance_augment",
    "apply_transform",
    "TTA_VIEWS",
    "tta_views",
    "preprocess_folder",
    "FolderResult",
    "class_weights",
    "is_image_file",
    "iter_image_files",
    "resolve_image_paths",
]
