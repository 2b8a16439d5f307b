//! Reading TRL datasets from JSON Lines files (one JSON object per line), the format
//! `datasets.Dataset.to_json` writes and the Hub serves next to Parquet.

use std::path::Path;

use serde_json::Value;

use super::rows::{RowContext, TrlRow};
use crate::Error;

/// How [`read_jsonl`] treats malformed rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnMalformed {
    /// The first malformed row is an [`Error::Data`] naming its row and field (default).
    #[default]
    Fail,
    /// Malformed rows are skipped and reported in [`Dataset::skipped`].
    Skip,
}

/// A row that [`OnMalformed::Skip`] left out.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    /// 1-based line number.
    pub row: usize,
    /// The error the row gave (an [`Error::Data`]).
    pub reason: String,
}

/// Rows read from a file, with the rows that were skipped.
#[derive(Debug, Clone)]
pub struct Dataset<R> {
    /// The rows, in file order.
    pub rows: Vec<R>,
    /// Rows left out under [`OnMalformed::Skip`] (always empty under `Fail`).
    pub skipped: Vec<SkippedRow>,
}

/// Reads a JSONL file into typed rows of one TRL type (`R`: [`PreferenceRow`],
/// [`UnpairedRow`], [`PromptRow`], [`PromptCompletionRow`], [`SftRow`]). Blank lines are ignored (they are not rows,
/// but the line numbers in errors are the file's). Keys that the type does not use are
/// ignored, as TRL's trainers ignore extra columns.
///
/// Errors ([`Error::Data`], naming the file, the 1-based row and the field): a line that is
/// not a JSON object, a missing field, a field of the wrong type, a row whose fields mix the
/// standard and conversational formats, a row in another format or of another type than the
/// first row (TRL decides both once, from the first example). With [`OnMalformed::Skip`] those rows
/// are skipped and listed in [`Dataset::skipped`]; an I/O error and an empty file are errors
/// either way.
///
/// [`PreferenceRow`]: super::PreferenceRow
/// [`UnpairedRow`]: super::UnpairedRow
/// [`PromptRow`]: super::PromptRow
/// [`SftRow`]: super::SftRow
/// [`PromptCompletionRow`]: super::PromptCompletionRow
pub fn read_jsonl<R: TrlRow>(
    path: impl AsRef<Path>,
    on_malformed: OnMalformed,
) -> crate::Result<Dataset<R>> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Data {
        file: file.clone(),
        row: None,
        field: None,
        reason: e.to_string(),
    })?;
    parse_jsonl(&text, &file, on_malformed)
}

/// [`read_jsonl`] on text in memory; `file` names it in errors.
pub fn parse_jsonl<R: TrlRow>(
    text: &str,
    file: &str,
    on_malformed: OnMalformed,
) -> crate::Result<Dataset<R>> {
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let value = serde_json::from_str::<Value>(line).map_err(|e| Error::Data {
                file: file.to_string(),
                row: Some(index + 1),
                field: None,
                reason: format!("not valid JSON: {e}"),
            });
            (index + 1, value)
        });
    collect_rows(lines, file, on_malformed)
}

/// Typed rows from `(1-based row, JSON value)` items: the one reader behind JSONL and Parquet.
pub(crate) fn collect_rows<R: TrlRow>(
    items: impl Iterator<Item = (usize, crate::Result<Value>)>,
    file: &str,
    on_malformed: OnMalformed,
) -> crate::Result<Dataset<R>> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut first: Option<(bool, &'static str, usize)> = None;
    for (row_number, value) in items {
        let ctx = RowContext {
            file,
            row: row_number,
        };
        let parsed = value.and_then(|v| parse_row::<R>(v, ctx)).and_then(|row| {
            let conversational = row.is_conversational();
            let describe = |c: bool| if c { "conversational" } else { "standard" };
            let mismatch = |reason: String| Error::Data {
                file: file.to_string(),
                row: Some(row_number),
                field: None,
                reason,
            };
            match first {
                Some((c, _, at)) if c != conversational => Err(mismatch(format!(
                    "is {} but row {at} is {}: all rows must share the first row's format",
                    describe(conversational),
                    describe(c),
                ))),
                Some((_, kind, at)) if kind != row.row_type() => Err(mismatch(format!(
                    "is a {} row but row {at} is a {kind} row: all rows must share one type",
                    row.row_type(),
                ))),
                _ => Ok(row),
            }
        });
        match parsed {
            Ok(row) => {
                first.get_or_insert((row.is_conversational(), row.row_type(), row_number));
                rows.push(row);
            }
            Err(err) if on_malformed == OnMalformed::Skip => skipped.push(SkippedRow {
                row: row_number,
                reason: err.to_string(),
            }),
            Err(err) => return Err(err),
        }
    }
    if rows.is_empty() {
        return Err(Error::Data {
            file: file.to_string(),
            row: None,
            field: None,
            reason: format!(
                "no {} row ({} skipped as malformed)",
                R::KIND,
                skipped.len()
            ),
        });
    }
    Ok(Dataset { rows, skipped })
}

/// One row from a JSON value. Top-level `null` fields count as absent (a column a row does
/// not have, as `datasets` fills it).
fn parse_row<R: TrlRow>(value: Value, ctx: RowContext<'_>) -> crate::Result<R> {
    let Value::Object(mut object) = value else {
        return Err(Error::Data {
            file: ctx.file.to_string(),
            row: Some(ctx.row),
            field: None,
            reason: "a row must be a JSON object".into(),
        });
    };
    object.retain(|_, v| !v.is_null());
    R::from_json(&object, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{PreferenceRow, Text, UnpairedRow};

    #[test]
    fn errors_name_row_and_field_and_skip_counts() {
        let text = "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n";
        let err = parse_jsonl::<PreferenceRow>(text, "t.jsonl", OnMalformed::Fail).unwrap_err();
        match err {
            Error::Data { row, field, .. } => {
                assert_eq!(row, Some(3));
                assert_eq!(field.as_deref(), Some("rejected"));
            }
            other => panic!("{other}"),
        }
        let data = parse_jsonl::<PreferenceRow>(text, "t.jsonl", OnMalformed::Skip).unwrap();
        assert_eq!(data.rows.len(), 1);
        assert_eq!(data.skipped.len(), 1);
        assert_eq!(data.skipped[0].row, 3);
        assert_eq!(data.rows[0].chosen, Text::Standard("b".into()));
    }

    #[test]
    fn mixed_formats_and_bad_label_are_refused() {
        let text = "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": true}\n{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}], \"label\": false}\n";
        let err = parse_jsonl::<UnpairedRow>(text, "t", OnMalformed::Fail).unwrap_err();
        assert!(matches!(err, Error::Data { row: Some(2), .. }), "{err}");
        let text = "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": \"yes\"}\n";
        let err = parse_jsonl::<UnpairedRow>(text, "t", OnMalformed::Fail).unwrap_err();
        assert!(err.to_string().contains("field `label`"), "{err}");
    }
}
