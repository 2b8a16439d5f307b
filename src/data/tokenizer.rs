//! A Hugging Face tokenizer directory: `tokenizer.json` through the `tokenizers` crate (the
//! library transformers' fast tokenizers wrap), special tokens and the chat template from
//! `tokenizer_config.json` / `chat_template.jinja`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::rows::Message;
use super::template::{ChatTemplate, Rendered};
use crate::Error;

/// Options of [`HfTokenizer::apply_chat_template`], named as transformers'
/// `apply_chat_template` arguments.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// Append the header that starts an assistant turn. Default: false.
    pub add_generation_prompt: bool,
    /// Leave the final message open so that generation continues it (incompatible with
    /// `add_generation_prompt`). Default: false.
    pub continue_final_message: bool,
    /// Tool schemas (`tools` in the template); `None` renders `tools` as `none`.
    pub tools: Option<Value>,
    /// Extra template variables (TRL's `chat_template_kwargs`, e.g. `enable_thinking`); they
    /// override the special tokens of the same name.
    pub kwargs: Map<String, Value>,
    /// Also return the assistant-token mask from the template's `{% generation %}` blocks.
    pub return_assistant_tokens_mask: bool,
}

/// Token ids of a rendered conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEncoding {
    /// The ids (the rendered text tokenized without added special tokens, as transformers
    /// does: the template writes them).
    pub input_ids: Vec<u32>,
    /// 1 on tokens that overlap a `{% generation %}` block, when asked for.
    pub assistant_masks: Option<Vec<u8>>,
}

/// A Hugging Face tokenizer directory.
///
/// Reads `tokenizer.json` (required), `tokenizer_config.json` (special tokens, the chat
/// template in its `chat_template` key) and `chat_template.jinja` (the chat template, which
/// transformers 5 writes there and prefers), `special_tokens_map.json` (older special-token
/// file) when present.
#[derive(Debug)]
pub struct HfTokenizer {
    tokenizer: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
    /// Named special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`, ...), as
    /// transformers' `special_tokens_map`.
    special_tokens: BTreeMap<String, String>,
}

fn tokenizer_error(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// A special token in a config file: a string, or an `AddedToken` object with `content`.
fn token_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(object) => object
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl HfTokenizer {
    /// Loads a tokenizer directory (the files `save_pretrained` writes).
    ///
    /// Errors ([`Error::Tokenizer`] naming the file): no `tokenizer.json` (a slow-only
    /// tokenizer: convert it with transformers first), a file that does not parse, a chat
    /// template that does not compile, a special token that is not in the vocabulary.
    pub fn from_pretrained(dir: impl AsRef<Path>) -> crate::Result<Self> {
        let dir = dir.as_ref();
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| tokenizer_error(tokenizer_file.display().to_string(), e))?;
        let read_json = |name: &str| -> crate::Result<Option<Value>> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| tokenizer_error(path.display().to_string(), e)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(tokenizer_error(path.display().to_string(), e)),
            }
        };
        let config = read_json("tokenizer_config.json")?.unwrap_or(Value::Null);
        let legacy_map = read_json("special_tokens_map.json")?.unwrap_or(Value::Null);
        let mut special_tokens = BTreeMap::new();
        for key in SPECIAL_TOKEN_KEYS {
            let value = config
                .get(key)
                .and_then(token_string)
                .or_else(|| legacy_map.get(key).and_then(token_string));
            if let Some(token) = value {
                special_tokens.insert(key.to_string(), token);
            }
        }
        let jinja_path = dir.join("chat_template.jinja");
        let template_source = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match config.get("chat_template")
            {
                Some(Value::String(source)) => Some(source.clone()),
                // A list of named templates: the one named "default".
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string),
                _ => None,
            },
            Err(e) => return Err(tokenizer_error(jinja_path.display().to_string(), e)),
        };
        let chat_template = template_source
            .as_deref()
            .map(ChatTemplate::new)
            .transpose()?;
        let this = Self {
            tokenizer,
            chat_template,
            special_tokens,
        };
        for (key, token) in &this.special_tokens {
            if this.tokenizer.token_to_id(token).is_none() {
                return Err(tokenizer_error(
                    dir.display().to_string(),
                    format!("{key} {token:?} is not in the vocabulary"),
                ));
            }
        }
        Ok(this)
    }

    /// Replaces the chat template (e.g. TRL's training variant, or one for a base model).
    pub fn with_chat_template(mut self, source: &str) -> crate::Result<Self> {
        self.chat_template = Some(ChatTemplate::new(source)?);
        Ok(self)
    }

    /// The chat template, if the tokenizer has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// A named special token's string (`"bos_token"`, `"eos_token"`, `"pad_token"`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).map(String::as_str)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// EOS token string.
    pub fn eos_token(&self) -> Option<&str> {
        self.special_token("eos_token")
    }

    /// EOS token id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token().and_then(|t| self.token_to_id(t))
    }

    /// BOS token id.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.special_token("bos_token")
            .and_then(|t| self.token_to_id(t))
    }

    /// The padding id TRL uses: the pad token, else the EOS token (TRL sets
    /// `pad_token = eos_token` when a tokenizer has none).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special_token("pad_token")
            .and_then(|t| self.token_to_id(t))
            .or_else(|| self.eos_token_id())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Tokenizes text, as transformers' `tokenizer(text, add_special_tokens=...)`: with
    /// `add_special_tokens`, the post-processor adds what the tokenizer adds (Llama's BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> crate::Result<Vec<u32>> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| tokenizer_error("encode", e))
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> crate::Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| tokenizer_error("decode", e))
    }

    /// Renders a conversation with the chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, ...)`.
    ///
    /// Errors: no chat template, `add_generation_prompt` with `continue_final_message`, the
    /// template's `raise_exception(...)` (message verbatim), a final message that the rendered
    /// text does not contain under `continue_final_message`.
    pub fn render_chat(
        &self,
        messages: &[Message],
        options: &ChatOptions,
    ) -> crate::Result<Rendered> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            tokenizer_error(
                "chat_template",
                "this tokenizer has no chat template (conversational data needs one; set it with `with_chat_template`)",
            )
        })?;
        if options.continue_final_message && options.add_generation_prompt {
            return Err(tokenizer_error(
                "chat_template",
                "continue_final_message and add_generation_prompt are not compatible",
            ));
        }
        if options.continue_final_message && options.return_assistant_tokens_mask {
            return Err(tokenizer_error(
                "chat_template",
                "continue_final_message is not compatible with return_assistant_tokens_mask",
            ));
        }
        // transformers appends this tag to the final message, renders, and cuts there.
        const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
        let mut chat: Vec<Value> = Vec::with_capacity(messages.len());
        for message in messages {
            ChatTemplate::check_content(&message.content)?;
            chat.push(message.to_json());
        }
        let mut final_message = String::new();
        if options.continue_final_message {
            let last = messages.last().ok_or_else(|| {
                tokenizer_error(
                    "messages",
                    "continue_final_message is set but the conversation is empty",
                )
            })?;
            final_message = last.content.clone();
            if let Some(Value::Object(object)) = chat.last_mut() {
                object.insert(
                    "content".into(),
                    Value::String(format!("{}{CONTINUE_TAG}", last.content)),
                );
            }
        }
        let mut context = Map::new();
        for (key, token) in &self.special_tokens {
            context.insert(key.clone(), Value::String(token.clone()));
        }
        for (key, value) in &options.kwargs {
            context.insert(key.clone(), value.clone());
        }
        context.insert("messages".into(), Value::Array(chat));
        context.insert("tools".into(), options.tools.clone().unwrap_or(Value::Null));
        context.insert("documents".into(), Value::Null);
        context.insert(
            "add_generation_prompt".into(),
            json!(options.add_generation_prompt),
        );
        let mut rendered = template.render(&Value::Object(context))?;
        if options.continue_final_message {
            let tag = CONTINUE_TAG.trim();
            if !rendered.text.contains(final_message.trim()) || !rendered.text.contains(tag) {
                return Err(tokenizer_error(
                    "chat_template",
                    "continue_final_message is set but the final message does not appear in the rendered chat",
                ));
            }
            let at = rendered.text.rfind(tag).unwrap_or(rendered.text.len());
            if rendered.text[at..].starts_with(CONTINUE_TAG) {
                rendered.text.truncate(at);
            } else {
                let kept = rendered.text[..at].trim_end().len();
                rendered.text.truncate(kept);
            }
        }
        Ok(rendered)
    }

    /// Renders and tokenizes a conversation, as transformers'
    /// `apply_chat_template(messages, tokenize=True, return_dict=True, ...)`: the rendered
    /// text is tokenized **without** added special tokens (the template writes them), and the
    /// assistant mask marks every token that overlaps a generation block.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        options: &ChatOptions,
    ) -> crate::Result<ChatEncoding> {
        let rendered = self.render_chat(messages, options)?;
        if !options.return_assistant_tokens_mask {
            return Ok(ChatEncoding {
                input_ids: self.encode(&rendered.text, false)?,
                assistant_masks: None,
            });
        }
        let encoding = self
            .tokenizer
            .encode_char_offsets(rendered.text.as_str(), false)
            .map_err(|e| tokenizer_error("encode", e))?;
        let spans = &rendered.generation_spans;
        let mut mask = vec![0u8; encoding.get_ids().len()];
        let mut span = 0;
        for (token, &(start, end)) in encoding.get_offsets().iter().enumerate() {
            while span < spans.len() && start >= spans[span].1 {
                span += 1;
            }
            if span == spans.len() {
                break;
            }
            if end > spans[span].0 {
                mask[token] = 1;
            }
        }
        Ok(ChatEncoding {
            input_ids: encoding.get_ids().to_vec(),
            assistant_masks: Some(mask),
        })
    }
}
