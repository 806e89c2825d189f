"""Arrow tables to Parquet or CSV (by the file's suffix), streamed and replaced atomically: a
reader, a resumed job or a process killed part-way sees the old file or the whole new one."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fer_ray.rundir import replace_synced, temporary


def write_table(table: pa.Table, path: Path) -> None:
    with table_writer(path, table.schema) as write:
        write(table)


@contextmanager
def table_writer(path: Path, schema: pa.Schema):
    """``with table_writer(path, schema) as write: write(table) ...``: the tables go to a hidden
    file beside ``path`` that replaces it once all of them are written (and is removed if not)."""
    tmp = temporary(path)
    writer = (pacsv.CSVWriter if path.suffix.lower() == ".csv" else pq.ParquetWriter)(str(tmp), schema)
    try:
        yield writer.write_table
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    replace_synced(tmp, path)
