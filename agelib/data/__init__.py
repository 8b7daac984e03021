"""The data layer: find, check, deduplicate, split, cache and batch face images.

Chapters use it through this namespace::

    from agelib import data
    faces = data.load_faces()          # real UTKFace if found, else synthetic (says which)
    split = faces.split(seed=0)        # the standard train/valid/test protocol
    dls = data.face_dataloaders(faces, split)

The modules, in the order data flows through them: ``utkface`` (names, checks,
duplicates), ``sources`` (which data, cached scans), ``splits`` (the protocol),
``cache`` (decode once, packs), ``nearcopies`` (one photo under two hashes), ``loaders``
(Dataset, batches, fastai), plus
``synthetic`` (the offline stand-in) and ``download`` (fetching UTKFace).
"""

from .cache import Pack, build_cache, square_resize, to_rgb, write_pack
from .nearcopies import across_splits, leaked_test_faces, near_copies
from .loaders import (BatchTransform, FaceDataset, FaceLoader, SplitData, denormalize,
                      face_dataloaders, split_tables)
from .sources import (Faces, find_data, load_faces, load_folder, load_pack, load_synthetic,
                      load_table)
from .splits import (check_no_leak, fold_split, load_split, make_folds, make_split, save_split,
                     subsample)
from .utkface import (GENDERS, RACES, DataReport, deduplicate, duplicate_groups, parse_name,
                      scan_folder)
