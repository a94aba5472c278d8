"""Finding an F0 predictor's weight file from its record, without importing torch or the predictor."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from loguru import logger

from core.pretrained import require_pretrained
from core.registry import F0PredictorRecord, packaged_file


def pretrained_weights(record: F0PredictorRecord, pretrain_dir: Path,
                       find_packaged: Callable[[], Path | None] | None = None) -> Path:
    """pretrain/<record.file>; without it the weights an installed package ships (`record.packaged`);
    without both, the usual clear error. `find_packaged` replaces the package lookup (tests stub it)."""
    path = Path(pretrain_dir) / record.file
    if not path.is_file() and record.packaged:
        bundled = find_packaged() if find_packaged else packaged_file(record.packaged)
        if bundled is not None:
            package = record.packaged.split("/")[0]
            logger.info(f"{path} not found: using the {record.name.upper()} checkpoint bundled with {package} "
                        f"({bundled})")
            return bundled
    return require_pretrained(path, f"f0 predictor {record.name}")
