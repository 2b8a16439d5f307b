//! Hugging Face chat templates, rendered with `minijinja` the way transformers 5 renders them
//! with Jinja2 (`transformers/utils/chat_template_utils.py`).
//!
//! Environment, as transformers': `trim_blocks` and `lstrip_blocks` on, loop controls
//! (`break` / `continue`), Python string and dict methods (`.strip()`, `.startswith()`,
//! `.split()`, `.items()`, `.get()`, ... through `minijinja-contrib`'s `pycompat`), the globals
//! `raise_exception(message)` (an [`Error::Tokenizer`](crate::Error::Tokenizer) carrying the
//! message verbatim), `strftime_now(format)` (UTC), `namespace(...)`, `dict(...)`, and a
//! `tojson` filter that prints like Python's `json.dumps(x, ensure_ascii=False)`
//! (`", "` / `": "` separators; `indent=`, `separators=`, `sort_keys=` and `ensure_ascii=`
//! accepted). `{% generation %}...{% endgeneration %}` blocks render their body and record its
//! span, for assistant-only masks.
//! JSON objects keep their key order (feature `data` turns on `serde_json`'s and minijinja's
//! `preserve_order`), so `{{ tool | tojson }}` prints a tool schema's keys in the order Python
//! does.

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, ErrorKind};
use serde_json::Value;

/// Marks the start and end of a `{% generation %}` block in the rendered text (Unicode
/// private-use code points; a message containing them is refused).
const GENERATION_START: char = '\u{F0001}';
const GENERATION_END: char = '\u{F0002}';

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

/// A rendered conversation, with the character spans of its `{% generation %}` blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The rendered text.
    pub text: String,
    /// `[start, end)` **character** (not byte) offsets of each generation block, in order.
    pub generation_spans: Vec<(usize, usize)>,
}

fn template_error(err: minijinja::Error) -> crate::Error {
    let reason = match err.kind() {
        // `raise_exception(message)`: the template author's message, verbatim.
        ErrorKind::InvalidOperation if err.detail().is_some() => {
            err.detail().unwrap_or_default().to_string()
        }
        _ => {
            let mut reason = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(inner) = source {
                reason.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            reason
        }
    };
    crate::Error::Tokenizer {
        what: "chat_template".into(),
        reason,
    }
}

/// `{% generation %}` / `{% endgeneration %}` become a filter block, which keeps Jinja's
/// whitespace control (`-`, `trim_blocks`, `lstrip_blocks`) of a block tag.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("%}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = &after[..close];
        let left_dash = inner.starts_with('-');
        let right_dash = inner.ends_with('-');
        let word = inner.trim_matches('-').trim();
        let replacement = match word {
            "generation" => Some("filter __generation"),
            "endgeneration" => Some("endfilter"),
            _ => None,
        };
        match replacement {
            Some(body) => {
                out.push_str("{%");
                if left_dash {
                    out.push('-');
                }
                out.push(' ');
                out.push_str(body);
                out.push(' ');
                if right_dash {
                    out.push('-');
                }
                out.push_str("%}");
            }
            None => {
                out.push_str("{%");
                out.push_str(inner);
                out.push_str("%}");
            }
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `json.dumps(value, ensure_ascii, indent, separators, sort_keys)`.
struct PythonJson {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PythonJson {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(unit) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    }

    fn write(&self, value: &Value, depth: usize, out: &mut String) {
        match value {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
                // Python's repr of a float: `1.0`, `1e-05`, `Infinity`.
                Some(f) => out.push_str(&python_float(f)),
                None => out.push_str(&n.to_string()),
            },
            Value::String(s) => python_string(s, self.ensure_ascii, out),
            Value::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    self.write(item, depth + 1, out);
                }
                self.newline(out, depth);
                out.push(']');
            }
            Value::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    python_string(key, self.ensure_ascii, out);
                    out.push_str(&self.key_sep);
                    self.write(item, depth + 1, out);
                }
                self.newline(out, depth);
                out.push('}');
            }
        }
    }
}

fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Python: shortest repr, exponent with sign and at least two digits.
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

fn python_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<JinjaValue, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<JinjaValue> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.to_string()),
        },
    };
    let (item_sep, key_sep) = match &separators {
        Some(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        // Python: (', ', ': ') without indent, (',', ': ') with one.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let style = PythonJson {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    // Not HTML-escaped: a chat template is not HTML (transformers overrides Jinja's filter
    // for the same reason).
    Ok(JinjaValue::from_safe_string(out))
}

/// `strftime_now(format)`: the current UTC time through a `strftime` subset (`%Y %y %m %B %b
/// %d %e %j %A %a %H %I %M %S %p %%`); other directives are left as written.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format)
}

fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant): proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles a template.
    ///
    /// Errors: a template the engine cannot parse ([`Error::Tokenizer`](crate::Error::Tokenizer)
    /// with the engine's message and line).
    pub fn new(source: &str) -> crate::Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_filter("__generation", |body: String| {
            format!("{GENERATION_START}{body}{GENERATION_END}")
        });
        env.add_function(
            "raise_exception",
            |message: String| -> Result<JinjaValue, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat_template", rewrite_generation_tags(source))
            .map_err(template_error)?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    /// The template's source, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `true` if the template marks assistant turns with `{% generation %}` (needed for
    /// assistant-only loss masks).
    pub fn has_generation_blocks(&self) -> bool {
        self.source.contains("generation %}") || self.source.contains("generation -%}")
    }

    /// Renders `context` (a JSON object: `messages`, `add_generation_prompt`, `tools`, special
    /// tokens, ...). Markers of generation blocks are removed from the text and returned as
    /// spans.
    pub fn render(&self, context: &Value) -> crate::Result<Rendered> {
        let template = self
            .env
            .get_template("chat_template")
            .map_err(template_error)?;
        let raw = template
            .render(JinjaValue::from(minijinja::value::Serde(context)))
            .map_err(template_error)?;
        let mut text = String::with_capacity(raw.len());
        let mut generation_spans = Vec::new();
        let mut open: Option<usize> = None;
        let mut chars = 0usize;
        for c in raw.chars() {
            match c {
                GENERATION_START => open = Some(chars),
                GENERATION_END => {
                    if let Some(start) = open.take() {
                        generation_spans.push((start, chars));
                    }
                }
                c => {
                    text.push(c);
                    chars += 1;
                }
            }
        }
        Ok(Rendered {
            text,
            generation_spans,
        })
    }

    /// Refuses text that contains the private-use markers of generation blocks.
    pub(crate) fn check_content(content: &str) -> crate::Result<()> {
        if content.contains([GENERATION_START, GENERATION_END]) {
            return Err(crate::Error::Tokenizer {
                what: "chat_template".into(),
                reason: "message content contains U+F0001 or U+F0002, which mark generation blocks"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tojson_prints_like_python_json_dumps() {
        // transformers' tojson = json.dumps(x, ensure_ascii=False): json.dumps({"a": [1, 2.5, "é"], "b": None}, ensure_ascii=False) == '{"a": [1, 2.5, "é"], "b": null}'
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
        )
        .unwrap();
        let out = t
            .render(&json!({"x": {"a": [1, 2.5, "é"], "b": null}}))
            .unwrap()
            .text;
        // json.dumps(x, indent=2) == '{\n  "a": [\n    1,\n    2.5,\n    "é"\n  ],\n  "b": null\n}'
        // json.dumps("é", ensure_ascii=True) == '"\\u00e9"'
        assert_eq!(
            out,
            "{\"a\": [1, 2.5, \"é\"], \"b\": null}|{\n  \"a\": [\n    1,\n    2.5,\n    \"é\"\n  ],\n  \"b\": null\n}|\"\\u00e9\""
        );
        // repr(1e-05) == '1e-05', repr(1e16) == '1e+16', repr(3.0) == '3.0'
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(3.0), "3.0");
    }

    #[test]
    fn raise_exception_carries_the_message_and_generation_spans_are_tracked() {
        let t =
            ChatTemplate::new("{% if x %}{{ raise_exception('roles must alternate') }}{% endif %}")
                .unwrap();
        let err = t.render(&json!({"x": true})).unwrap_err();
        assert!(err.to_string().ends_with("roles must alternate"), "{err}");

        let t = ChatTemplate::new(
            "a{% generation %}bc{% endgeneration %}d{%- generation -%}  é  {%- endgeneration %}",
        )
        .unwrap();
        let r = t.render(&json!({})).unwrap();
        assert_eq!(r.text, "abcdé");
        assert_eq!(r.generation_spans, vec![(1, 3), (4, 5)]);
    }

    #[test]
    fn strftime_matches_python() {
        // datetime.fromtimestamp(1796593160, timezone.utc).strftime("%d %b %Y %H:%M:%S %A %j")
        // == '06 Dec 2026 21:39:20 Sunday 340'
        assert_eq!(
            strftime(1_796_593_160, "%d %b %Y %H:%M:%S %A %j"),
            "06 Dec 2026 21:39:20 Sunday 340"
        );
        // 2024-02-29T12:00:00Z, a leap day: '29 February 2024 060 Thu 12PM'
        assert_eq!(
            strftime(1_709_208_000, "%d %B %Y %j %a %I%p"),
            "29 February 2024 060 Thu 12PM"
        );
    }
}
