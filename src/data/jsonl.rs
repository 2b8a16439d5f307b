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
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut format: Option<(bool, &'static str, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ctx = RowContext {
            file,
            row: index + 1,
        };
        let parsed = parse_line::<R>(line, ctx).and_then(|row| {
            let conversational = row.is_conversational();
            let describe = |c: bool| if c { "conversational" } else { "standard" };
            match format {
                Some((first, _, first_row)) if first != conversational => Err(Error::Data {
                    file: file.to_string(),
                    row: Some(ctx.row),
                    field: None,
                    reason: format!(
                        "is {} but row {first_row} is {}: all rows must share the first row's format",
                        describe(conversational),
                        describe(first),
                    ),
                }),
                Some((_, first_type, first_row)) if first_type != row.row_type() => Err(Error::Data {
                    file: file.to_string(),
                    row: Some(ctx.row),
                    field: None,
                    reason: format!(
                        "is a {} row but row {first_row} is a {first_type} row: all rows must share one type",
                        row.row_type(),
                    ),
                }),
                _ => Ok(row),
            }
        });
        match parsed {
            Ok(row) => {
                format.get_or_insert((row.is_conversational(), row.row_type(), index + 1));
                rows.push(row);
            }
            Err(err) if on_malformed == OnMalformed::Skip => skipped.push(SkippedRow {
                row: index + 1,
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

fn parse_line<R: TrlRow>(line: &str, ctx: RowContext<'_>) -> crate::Result<R> {
    let value: Value = serde_json::from_str(line).map_err(|e| Error::Data {
        file: ctx.file.to_string(),
        row: Some(ctx.row),
        field: None,
        reason: format!("not valid JSON: {e}"),
    })?;
    let Value::Object(object) = value else {
        return Err(Error::Data {
            file: ctx.file.to_string(),
            row: Some(ctx.row),
            field: None,
            reason: "a row must be a JSON object".into(),
        });
    };
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
