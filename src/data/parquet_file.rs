//! Reading TRL datasets from Parquet files (feature `parquet`): the Hub's format
//! (`data/train-00000-of-00001.parquet`), through the `parquet` crate's row API (no Arrow).

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};

use super::jsonl::{Dataset, OnMalformed, collect_rows};
use super::rows::TrlRow;
use crate::Error;

/// Reads a Parquet file into typed rows of one TRL type, as [`read_jsonl`](super::read_jsonl)
/// does for JSON Lines: the same row types, the same errors (naming the 1-based row and the
/// field), the same [`OnMalformed`] handling. Nested columns (`list<struct<role, content>>`
/// for conversations) become the same messages as their JSON form; a `null` column value counts
/// as absent.
///
/// Codecs: uncompressed, Snappy (what `datasets` and `pyarrow` write by default), gzip and
/// LZ4; a file compressed with another codec (zstd, brotli) is an [`Error::Data`] naming it.
pub fn read_parquet<R: TrlRow>(
    path: impl AsRef<Path>,
    on_malformed: OnMalformed,
) -> crate::Result<Dataset<R>> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let io = |reason: String| Error::Data {
        file: file.clone(),
        row: None,
        field: None,
        reason,
    };
    let handle = std::fs::File::open(path).map_err(|e| io(e.to_string()))?;
    let reader = SerializedFileReader::new(handle).map_err(|e| io(e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| io(e.to_string()))?
        .enumerate()
        .map(|(index, row)| {
            let value = row.map(|r| r.to_json_value()).map_err(|e| Error::Data {
                file: file.clone(),
                row: Some(index + 1),
                field: None,
                reason: e.to_string(),
            });
            (index + 1, value)
        });
    collect_rows(rows, &file, on_malformed)
}
