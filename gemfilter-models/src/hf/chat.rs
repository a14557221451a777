//! Chat templates (Jinja, as in `tokenizer_config.json`) rendered with minijinja the way
//! transformers renders them.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;

use super::json::JsonFile;
use crate::error::{ModelError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A turn with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// A compiled chat template with the special tokens it may reference.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template from its Jinja source.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let template = Self {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        // Compile once now so a broken template is reported at load time.
        template.environment()?;
        Ok(template)
    }

    /// The template of a Hugging Face folder: `chat_template.jinja`, else the `chat_template`
    /// field of `tokenizer_config.json` (a string, or a list of named templates, "default"
    /// preferred). `None` when the folder has none.
    pub fn from_folder(folder: &Path) -> Result<Option<Self>> {
        let config_path = folder.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            Some(JsonFile::read(&config_path, "tokenizer_config.json")?)
        } else {
            None
        };
        let token = |field: &str| -> String {
            config
                .as_ref()
                .and_then(|c| c.get(field))
                .and_then(|v| {
                    v.as_str()
                        .or_else(|| v.get("content").and_then(|c| c.as_str()))
                })
                .unwrap_or_default()
                .to_string()
        };
        let jinja_path = folder.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|source| ModelError::Io {
                    path: jinja_path.clone(),
                    source,
                })?,
            )
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                None => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(named)) => {
                    let pick = |wanted: Option<&str>| {
                        named.iter().find_map(|entry| {
                            let name = entry.get("name")?.as_str()?;
                            let template = entry.get("template")?.as_str()?;
                            (wanted.is_none() || wanted == Some(name)).then(|| template.to_string())
                        })
                    };
                    pick(Some("default")).or_else(|| pick(None))
                }
                Some(_) => {
                    return Err(config.as_ref().expect("field came from config").invalid(
                        "chat_template",
                        "must be a string or a list of named templates",
                    ));
                }
            }
        };
        source
            .map(|s| Self::new(s, token("bos_token"), token("eos_token")))
            .transpose()
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| -> String {
            // Llama 3.1's template prints today's date, as transformers does.
            strftime_today(&format)
        });
        env.add_filter(
            "tojson",
            |value: Value, indent: Option<usize>| -> std::result::Result<String, JinjaError> {
                // Python's json.dumps(ensure_ascii=False), which transformers uses (no HTML escaping).
                let json = serde_json::to_value(&value)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
                let text = match indent {
                    Some(n) => {
                        let mut out = Vec::new();
                        let indent = " ".repeat(n);
                        let formatter =
                            serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
                        json.serialize(&mut ser).map_err(|e| {
                            JinjaError::new(ErrorKind::InvalidOperation, e.to_string())
                        })?;
                        String::from_utf8(out).expect("serde_json writes UTF-8")
                    }
                    None => python_json(&json),
                };
                Ok(text)
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| ModelError::ChatTemplate(format!("cannot compile: {e}")))?;
        Ok(env)
    }

    /// Renders `messages`, appending the assistant header when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env.get_template("chat").expect("added above");
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| ModelError::ChatTemplate(format!("cannot render: {e}")))
    }
}

/// `json.dumps(value, ensure_ascii=False)`: `", "` and `": "` separators.
fn python_json(value: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match value {
        J::Array(items) => format!(
            "[{}]",
            items.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        J::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", J::String(k.clone()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// Today's UTC date formatted with the `%d %m %y %Y %b %B` directives of `strftime`.
fn strftime_today(format: &str) -> String {
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
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (year, month, day) = civil_from_days(days);
    let month_name = MONTHS[(month - 1) as usize];
    format
        .replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%y", &format!("{:02}", year % 100))
        .replace("%B", month_name)
        .replace("%b", &month_name[..3])
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn python_style_json() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a": [1, "é<"], "b": null}"#).unwrap();
        assert_eq!(python_json(&v), r#"{"a": [1, "é<"], "b": null}"#);
    }

    #[test]
    fn renders_with_trim_and_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{{ m['role'] }}:{{ m['content'].strip() }}|\n{% endfor %}{% if add_generation_prompt %}{{ bos_token }}{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let out = t.render(&[ChatMessage::user("  hi  ")], true).unwrap();
        assert_eq!(out, "user:hi|\n<s>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }
}
