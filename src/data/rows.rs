//! Typed rows for TRL's dataset formats and types, parsed from JSON objects.
//!
//! TRL ("Dataset formats and types") crosses two **formats**, standard (plain strings) and
//! conversational (lists of `{role, content}` messages), with the **types** below. A row's
//! fields all have the same format; a dataset's rows all have the format of its first row
//! (TRL decides it once, from the first example).

use serde_json::{Map, Value};

/// One chat message: `role`, `content`, and any other keys (`tool_calls`, `reasoning_content`,
/// `name`, ...), which are handed to the chat template unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `"system"`, `"user"`, `"assistant"`, `"tool"`, ...
    pub role: String,
    /// The message text. Content given as a list of typed parts (multimodal) is refused.
    pub content: String,
    /// Other keys of the message object, kept for the template.
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with only `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            extra: Map::new(),
        }
    }

    /// The message as the JSON object a chat template sees: `role`, `content`, then the other
    /// keys in file order, without those whose value is `null` (transformers drops them).
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("role".into(), Value::String(self.role.clone()));
        object.insert("content".into(), Value::String(self.content.clone()));
        for (key, value) in &self.extra {
            if !value.is_null() {
                object.insert(key.clone(), value.clone());
            }
        }
        Value::Object(object)
    }
}

/// A field's value in one of TRL's two formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// Standard format: a plain string.
    Standard(String),
    /// Conversational format: a list of messages.
    Conversational(Vec<Message>),
}

impl Text {
    /// `true` for the conversational format.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Text::Conversational(_))
    }

    /// The string of a standard field.
    pub fn as_standard(&self) -> Option<&str> {
        match self {
            Text::Standard(text) => Some(text),
            Text::Conversational(_) => None,
        }
    }

    /// The messages of a conversational field.
    pub fn as_messages(&self) -> Option<&[Message]> {
        match self {
            Text::Standard(_) => None,
            Text::Conversational(messages) => Some(messages),
        }
    }

    /// `self` followed by `other` (string concatenation, or the two message lists), as TRL's
    /// `example["prompt"] + example["chosen"]`. `None` when the formats differ.
    pub fn concat(&self, other: &Text) -> Option<Text> {
        match (self, other) {
            (Text::Standard(a), Text::Standard(b)) => Some(Text::Standard(format!("{a}{b}"))),
            (Text::Conversational(a), Text::Conversational(b)) => {
                Some(Text::Conversational(a.iter().chain(b).cloned().collect()))
            }
            _ => None,
        }
    }
}

/// Where a field was read from, for error messages (not nameable outside the crate, which
/// seals [`TrlRow`]).
#[derive(Debug, Clone, Copy)]
pub struct RowContext<'a> {
    pub(crate) file: &'a str,
    pub(crate) row: usize,
}

impl RowContext<'_> {
    pub(crate) fn error(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> crate::Error {
        crate::Error::Data {
            file: self.file.to_string(),
            row: Some(self.row),
            field: Some(field.into()),
            reason: reason.into(),
        }
    }
}

/// "a string", "a list", ... for error messages (the TRL config loaders' wording).
fn type_name(value: &Value) -> &'static str {
    crate::trl::kind(value)
}

fn parse_message(value: &Value, field: &str, ctx: RowContext<'_>) -> crate::Result<Message> {
    let Value::Object(object) = value else {
        return Err(ctx.error(
            field,
            format!(
                "a message must be an object with `role` and `content`, got {}",
                type_name(value)
            ),
        ));
    };
    let role = match object.get("role") {
        Some(Value::String(role)) => role.clone(),
        Some(other) => {
            return Err(ctx.error(
                format!("{field}.role"),
                format!("must be a string, got {}", type_name(other)),
            ));
        }
        None => return Err(ctx.error(format!("{field}.role"), "missing")),
    };
    let content = match object.get("content") {
        Some(Value::String(content)) => content.clone(),
        Some(Value::Array(_)) => {
            return Err(ctx.error(
                format!("{field}.content"),
                "content as a list of typed parts (multimodal) is not supported; give a string",
            ));
        }
        Some(other) => {
            return Err(ctx.error(
                format!("{field}.content"),
                format!("must be a string, got {}", type_name(other)),
            ));
        }
        None => return Err(ctx.error(format!("{field}.content"), "missing")),
    };
    let extra = object
        .iter()
        .filter(|(key, _)| key.as_str() != "role" && key.as_str() != "content")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    Ok(Message {
        role,
        content,
        extra,
    })
}

/// Parses a standard (string) or conversational (list of messages) field.
pub(crate) fn parse_text(value: &Value, field: &str, ctx: RowContext<'_>) -> crate::Result<Text> {
    match value {
        Value::String(text) => Ok(Text::Standard(text.clone())),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_message(item, &format!("{field}[{i}]"), ctx))
            .collect::<crate::Result<Vec<_>>>()
            .map(Text::Conversational),
        other => Err(ctx.error(
            field,
            format!(
                "must be a string (standard format) or a list of messages (conversational), got {}",
                type_name(other)
            ),
        )),
    }
}

fn required<'v>(
    object: &'v Map<String, Value>,
    field: &str,
    ctx: RowContext<'_>,
    kind: &str,
) -> crate::Result<&'v Value> {
    object.get(field).ok_or_else(|| {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        ctx.error(
            field,
            format!("missing: a {kind} row needs it (the row has {keys:?})"),
        )
    })
}

/// Checks that all the row's fields share one format.
fn same_format(fields: &[(&str, &Text)], ctx: RowContext<'_>) -> crate::Result<()> {
    let Some((first_name, first)) = fields.first() else {
        return Ok(());
    };
    for (name, text) in &fields[1..] {
        if text.is_conversational() != first.is_conversational() {
            let format = |t: &Text| {
                if t.is_conversational() {
                    "conversational"
                } else {
                    "standard"
                }
            };
            return Err(ctx.error(
                *name,
                format!(
                    "is {} but `{first_name}` is {}: a row's fields must share one format",
                    format(text),
                    format(first)
                ),
            ));
        }
    }
    Ok(())
}

/// A TRL dataset type: how one JSON object becomes a typed row. Implemented by the row types
/// of this module only.
pub trait TrlRow: Sized + Clone {
    /// The type's name in TRL's docs, e.g. `"preference"`.
    const KIND: &'static str;
    /// Parses one row. `ctx` names the file and row in errors.
    #[doc(hidden)]
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self>;
    /// `true` if the row's fields are conversational.
    fn is_conversational(&self) -> bool;
    /// The row's TRL type, for types that accept several ([`SftRow`]); all rows of a file
    /// must have the first row's.
    fn row_type(&self) -> &'static str {
        Self::KIND
    }
}

/// Preference row (DPO, CPO, ORPO, reward models): `prompt`, `chosen`, `rejected`, or an
/// implicit prompt (`chosen` and `rejected` only, both starting with it; see
/// [`extract_prompt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRow {
    /// The prompt; `None` for an implicit prompt.
    pub prompt: Option<Text>,
    /// The preferred completion.
    pub chosen: Text,
    /// The dispreferred completion.
    pub rejected: Text,
}

impl TrlRow for PreferenceRow {
    const KIND: &'static str = "preference";
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self> {
        let prompt = object
            .get("prompt")
            .map(|v| parse_text(v, "prompt", ctx))
            .transpose()?;
        let chosen = parse_text(required(object, "chosen", ctx, Self::KIND)?, "chosen", ctx)?;
        let rejected = parse_text(
            required(object, "rejected", ctx, Self::KIND)?,
            "rejected",
            ctx,
        )?;
        let mut fields = vec![("chosen", &chosen), ("rejected", &rejected)];
        if let Some(prompt) = &prompt {
            fields.insert(0, ("prompt", prompt));
        }
        same_format(&fields, ctx)?;
        Ok(Self {
            prompt,
            chosen,
            rejected,
        })
    }
    fn is_conversational(&self) -> bool {
        self.chosen.is_conversational()
    }
}

/// Unpaired preference row (KTO, BCO): `prompt`, `completion`, `label` (`true` = desirable).
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedRow {
    /// The prompt.
    pub prompt: Text,
    /// The completion.
    pub completion: Text,
    /// `true` when the completion is desirable.
    pub label: bool,
}

impl TrlRow for UnpairedRow {
    const KIND: &'static str = "unpaired preference";
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self> {
        let prompt = parse_text(required(object, "prompt", ctx, Self::KIND)?, "prompt", ctx)?;
        let completion = parse_text(
            required(object, "completion", ctx, Self::KIND)?,
            "completion",
            ctx,
        )?;
        let label = match required(object, "label", ctx, Self::KIND)? {
            Value::Bool(label) => *label,
            other => {
                return Err(ctx.error(
                    "label",
                    format!(
                        "must be a boolean (true = desirable), got {}",
                        type_name(other)
                    ),
                ));
            }
        };
        same_format(&[("prompt", &prompt), ("completion", &completion)], ctx)?;
        Ok(Self {
            prompt,
            completion,
            label,
        })
    }
    fn is_conversational(&self) -> bool {
        self.prompt.is_conversational()
    }
}

/// Prompt-only row (GRPO, RLOO, online DPO, distillation): `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    /// The prompt. A conversational prompt that ends with an assistant message is continued
    /// (TRL's `continue_final_message`), otherwise it gets the generation prompt.
    pub prompt: Text,
}

impl TrlRow for PromptRow {
    const KIND: &'static str = "prompt-only";
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self> {
        let prompt = parse_text(required(object, "prompt", ctx, Self::KIND)?, "prompt", ctx)?;
        Ok(Self { prompt })
    }
    fn is_conversational(&self) -> bool {
        self.prompt.is_conversational()
    }
}

/// Prompt-completion row (SFT on completions): `prompt`, `completion`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptCompletionRow {
    /// The prompt.
    pub prompt: Text,
    /// The completion.
    pub completion: Text,
}

impl TrlRow for PromptCompletionRow {
    const KIND: &'static str = "prompt-completion";
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self> {
        let completion = parse_text(
            required(object, "completion", ctx, Self::KIND)?,
            "completion",
            ctx,
        )?;
        let prompt = parse_text(required(object, "prompt", ctx, Self::KIND)?, "prompt", ctx)?;
        same_format(&[("prompt", &prompt), ("completion", &completion)], ctx)?;
        Ok(Self { prompt, completion })
    }
    fn is_conversational(&self) -> bool {
        self.prompt.is_conversational()
    }
}

impl From<PromptCompletionRow> for SftRow {
    fn from(row: PromptCompletionRow) -> Self {
        SftRow::PromptCompletion {
            prompt: row.prompt,
            completion: row.completion,
        }
    }
}

/// Supervised fine-tuning row: prompt-completion (`prompt`, `completion`) or language
/// modeling (`text` in the standard format, `messages` in the conversational one).
#[derive(Debug, Clone, PartialEq)]
pub enum SftRow {
    /// `prompt` and `completion`.
    PromptCompletion {
        /// The prompt.
        prompt: Text,
        /// The completion.
        completion: Text,
    },
    /// `text` (standard) or `messages` (conversational).
    LanguageModeling(Text),
}

impl TrlRow for SftRow {
    const KIND: &'static str = "prompt-completion or language modeling";
    fn from_json(object: &Map<String, Value>, ctx: RowContext<'_>) -> crate::Result<Self> {
        if object.contains_key("prompt") || object.contains_key("completion") {
            return PromptCompletionRow::from_json(object, ctx).map(SftRow::from);
        }
        if let Some(messages) = object.get("messages") {
            let text = parse_text(messages, "messages", ctx)?;
            if !text.is_conversational() {
                return Err(ctx.error("messages", "must be a list of messages"));
            }
            return Ok(SftRow::LanguageModeling(text));
        }
        match object.get("text") {
            Some(Value::String(text)) => Ok(SftRow::LanguageModeling(Text::Standard(text.clone()))),
            Some(other) => Err(ctx.error(
                "text",
                format!("must be a string, got {}", type_name(other)),
            )),
            None => Err(ctx.error(
                "text",
                "missing: an SFT row needs `prompt` + `completion`, `text` or `messages`",
            )),
        }
    }
    fn is_conversational(&self) -> bool {
        match self {
            SftRow::PromptCompletion { prompt, .. } => prompt.is_conversational(),
            SftRow::LanguageModeling(text) => text.is_conversational(),
        }
    }
    fn row_type(&self) -> &'static str {
        match self {
            SftRow::PromptCompletion { .. } => "prompt-completion",
            SftRow::LanguageModeling(_) => "language modeling",
        }
    }
}

/// TRL's `extract_prompt` for a preference row with an implicit prompt: the longest common
/// prefix of `chosen` and `rejected` becomes the prompt, character by character for strings
/// (one space before the divergence goes back to the completions) and message by message for
/// conversations.
///
/// It reproduces TRL 1.16's loop exactly, including its edge cases: when one completion is a
/// prefix of the other, the prompt stops one element short of the shorter one; when they
/// differ at the first element, the space check reads the *last* element (Python's `[-1]`).
///
/// Errors: an empty `chosen` or `rejected` ([`Error::Data`](crate::Error::Data); TRL fails
/// there too), or the two in different formats.
pub fn extract_prompt(chosen: &Text, rejected: &Text) -> crate::Result<(Text, Text, Text)> {
    let ctx = RowContext {
        file: "<rows>",
        row: 0,
    };
    match (chosen, rejected) {
        (Text::Standard(chosen), Text::Standard(rejected)) => {
            let chosen_chars: Vec<char> = chosen.chars().collect();
            let rejected_chars: Vec<char> = rejected.chars().collect();
            let idx = common_prefix_index(&chosen_chars, &rejected_chars, |c| *c == ' ')
                .ok_or_else(|| ctx.error("chosen", "extract_prompt needs non-empty completions"))?;
            let (prompt, chosen) = split_chars(&chosen_chars, idx);
            let (_, rejected) = split_chars(&rejected_chars, idx);
            Ok((
                Text::Standard(prompt),
                Text::Standard(chosen),
                Text::Standard(rejected),
            ))
        }
        (Text::Conversational(chosen), Text::Conversational(rejected)) => {
            // A message never equals " ", so the space branch never fires here.
            let idx = common_prefix_index(chosen, rejected, |_| false)
                .ok_or_else(|| ctx.error("chosen", "extract_prompt needs non-empty completions"))?;
            let at = python_index(chosen.len(), idx);
            let rejected_at = python_index(rejected.len(), idx);
            Ok((
                Text::Conversational(chosen[..at].to_vec()),
                Text::Conversational(chosen[at..].to_vec()),
                Text::Conversational(rejected[rejected_at..].to_vec()),
            ))
        }
        _ => Err(ctx.error("rejected", "chosen and rejected must share one format")),
    }
}

/// The `idx` TRL's loop ends with (possibly -1), or `None` for an empty input.
fn common_prefix_index<T: PartialEq>(
    chosen: &[T],
    rejected: &[T],
    is_space: impl Fn(&T) -> bool,
) -> Option<isize> {
    let n = chosen.len().min(rejected.len());
    if n == 0 {
        return None;
    }
    for idx in 0..n {
        if chosen[idx] != rejected[idx] {
            // Python: `example["chosen"][idx - 1] == " "`, where index -1 is the last element.
            let previous = if idx == 0 {
                chosen.last()
            } else {
                chosen.get(idx - 1)
            };
            return Some(if previous.is_some_and(&is_space) {
                idx as isize - 1
            } else {
                idx as isize
            });
        }
    }
    Some(n as isize - 1)
}

/// Python's slice bound for `idx` (negative counts from the end).
fn python_index(len: usize, idx: isize) -> usize {
    if idx < 0 {
        len.saturating_sub(idx.unsigned_abs())
    } else {
        (idx as usize).min(len)
    }
}

fn split_chars(chars: &[char], idx: isize) -> (String, String) {
    let at = python_index(chars.len(), idx);
    (chars[..at].iter().collect(), chars[at..].iter().collect())
}

/// TRL's `unpair_preference_dataset`: each preference row becomes a desirable row (its
/// `chosen`) and an undesirable one (its `rejected`). TRL maps in batches of 1000 rows, so
/// within each block of 1000 rows all chosen rows come first, then all rejected ones; this
/// keeps that order. An implicit prompt is extracted first ([`extract_prompt`]).
pub fn unpair(rows: &[PreferenceRow]) -> crate::Result<Vec<UnpairedRow>> {
    const TRL_MAP_BATCH: usize = 1000;
    let mut out = Vec::with_capacity(rows.len() * 2);
    for block in rows.chunks(TRL_MAP_BATCH) {
        let explicit: Vec<(Text, Text, Text)> = block
            .iter()
            .map(|row| match &row.prompt {
                Some(prompt) => Ok((prompt.clone(), row.chosen.clone(), row.rejected.clone())),
                None => extract_prompt(&row.chosen, &row.rejected),
            })
            .collect::<crate::Result<_>>()?;
        for (label, pick) in [(true, 1usize), (false, 2)] {
            for (prompt, chosen, rejected) in &explicit {
                out.push(UnpairedRow {
                    prompt: prompt.clone(),
                    completion: if pick == 1 {
                        chosen.clone()
                    } else {
                        rejected.clone()
                    },
                    label,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard(s: &str) -> Text {
        Text::Standard(s.into())
    }

    // Expected values from TRL 1.16 `trl.data_utils.extract_prompt` on the same inputs.
    #[test]
    fn extract_prompt_strings_follow_trl() {
        // The docstring's case: the space before the divergence goes to the completions.
        let (p, c, r) = extract_prompt(
            &standard("The sky is blue."),
            &standard("The sky is green."),
        )
        .unwrap();
        assert_eq!(
            (p, c, r),
            (
                standard("The sky is"),
                standard(" blue."),
                standard(" green.")
            )
        );
        // One a prefix of the other: the loop ends at n - 1 without a break.
        let (p, c, r) = extract_prompt(&standard("abc"), &standard("abcd")).unwrap();
        assert_eq!((p, c, r), (standard("ab"), standard("c"), standard("cd")));
        // Different at the first char, last char a space: idx becomes -1.
        let (p, c, r) = extract_prompt(&standard("x "), &standard("y ")).unwrap();
        assert_eq!((p, c, r), (standard("x"), standard(" "), standard(" ")));
        // Characters, not bytes.
        let (p, _, _) = extract_prompt(&standard("été a"), &standard("été b")).unwrap();
        assert_eq!(p, standard("été"));
        assert!(extract_prompt(&standard(""), &standard("a")).is_err());
    }

    #[test]
    fn extract_prompt_conversations_split_at_the_first_different_message() {
        let user = Message::new("user", "What color is the sky?");
        let chosen = Text::Conversational(vec![user.clone(), Message::new("assistant", "Blue.")]);
        let rejected =
            Text::Conversational(vec![user.clone(), Message::new("assistant", "Green.")]);
        let (p, c, r) = extract_prompt(&chosen, &rejected).unwrap();
        assert_eq!(p, Text::Conversational(vec![user]));
        assert_eq!(
            c,
            Text::Conversational(vec![Message::new("assistant", "Blue.")])
        );
        assert_eq!(
            r,
            Text::Conversational(vec![Message::new("assistant", "Green.")])
        );
    }

    #[test]
    fn unpair_keeps_trl_block_order() {
        let rows: Vec<PreferenceRow> = (0..3)
            .map(|i| PreferenceRow {
                prompt: Some(standard(&format!("p{i}"))),
                chosen: standard(&format!("c{i}")),
                rejected: standard(&format!("r{i}")),
            })
            .collect();
        let unpaired = unpair(&rows).unwrap();
        let got: Vec<(String, bool)> = unpaired
            .iter()
            .map(|r| (r.completion.as_standard().unwrap().to_string(), r.label))
            .collect();
        let want: Vec<(String, bool)> = ["c0", "c1", "c2"]
            .iter()
            .map(|c| (c.to_string(), true))
            .chain(["r0", "r1", "r2"].iter().map(|r| (r.to_string(), false)))
            .collect();
        assert_eq!(got, want);
    }
}
