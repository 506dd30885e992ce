//! `data.template`: how an instruction record becomes the prompt a model answers.

use serde::{Deserialize, Serialize};

/// The prompt template of instruction data. The response follows the rendered prompt
/// directly, and ends with the tokenizer's `<|endoftext|>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PromptTemplate {
    /// Stanford Alpaca's template, as "Build a Large Language Model (From Scratch)" ch. 7
    /// uses it: a preamble, `### Instruction:`, `### Input:` when the record has an input,
    /// `### Response:`.
    #[default]
    Alpaca,
    /// Phi-3's `<|user|>` / `<|assistant|>:` turns (the book's exercise 7.1).
    Phi3,
    /// A text with `{instruction}` and optionally `{input}` (empty when the record has none).
    Custom(String),
}

const ALPACA_PREAMBLE: &str = "Below is an instruction that describes a task. Write a response \
                               that appropriately completes the request.";
const PLACEHOLDERS: [&str; 2] = ["instruction", "input"];

impl PromptTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "alpaca" => return Ok(Self::Alpaca),
            "phi3" => return Ok(Self::Phi3),
            _ => {}
        }
        if !text.contains("{instruction}") {
            return Err(format!(
                "expected \"alpaca\", \"phi3\" or a template text with {{instruction}} (and \
                 optionally {{input}}), not {text:?}"
            ));
        }
        if let Some(unknown) = placeholders(text).find(|name| !PLACEHOLDERS.contains(name)) {
            return Err(format!(
                "the template names {{{unknown}}}; only {{instruction}} and {{input}} are filled in"
            ));
        }
        Ok(Self::Custom(text.to_string()))
    }

    /// The prompt for one record; the model's response follows it.
    pub fn render(&self, instruction: &str, input: &str) -> String {
        match self {
            Self::Alpaca => {
                let input = match input.is_empty() {
                    true => String::new(),
                    false => format!("\n\n### Input:\n{input}"),
                };
                format!(
                    "{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}{input}\n\n### Response:\n"
                )
            }
            Self::Phi3 => {
                let input = match input.is_empty() {
                    true => String::new(),
                    false => format!("\n{input}"),
                };
                format!("<|user|>\n{instruction}{input}\n\n<|assistant|>:\n")
            }
            Self::Custom(text) => {
                text.replace("{instruction}", instruction).replace("{input}", input)
            }
        }
    }
}

impl PromptTemplate {
    /// Text that starts a new turn of the template: a reply that produces it instead of the
    /// end-of-response token ends there.
    pub fn turn_markers(&self) -> Vec<String> {
        match self {
            Self::Alpaca => vec!["\n\n### Instruction:".into(), "\n\n### Response:".into()],
            Self::Phi3 => vec!["<|user|>".into(), "<|assistant|>".into()],
            Self::Custom(_) => Vec::new(),
        }
    }
}

/// The `{name}` placeholders of a template text (names of letters, digits and `_`).
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split('{').skip(1).filter_map(|rest| {
        let (name, _) = rest.split_once('}')?;
        let is_name = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
        is_name.then_some(name)
    })
}

impl From<PromptTemplate> for String {
    fn from(template: PromptTemplate) -> String {
        match template {
            PromptTemplate::Alpaca => "alpaca".into(),
            PromptTemplate::Phi3 => "phi3".into(),
            PromptTemplate::Custom(text) => text,
        }
    }
}

impl TryFrom<String> for PromptTemplate {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl std::fmt::Display for PromptTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_shows_the_input_section_only_for_records_with_an_input() {
        let with = PromptTemplate::Alpaca.render("Translate.", "Hallo");
        assert!(with.starts_with("Below is an instruction"));
        assert!(
            with.ends_with("### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n### Response:\n")
        );
        let without = PromptTemplate::Alpaca.render("Name a colour.", "");
        assert!(without.ends_with("### Instruction:\nName a colour.\n\n### Response:\n"));
        assert!(!without.contains("### Input:"));
    }

    #[test]
    fn custom_templates_fill_in_their_placeholders_and_refuse_others() {
        let custom = PromptTemplate::parse("Q: {instruction} {input}\nA:").unwrap();
        assert_eq!(custom.render("Why?", ""), "Q: Why? \nA:");
        assert_eq!(String::from(custom.clone()), "Q: {instruction} {input}\nA:");
        assert!(PromptTemplate::parse("Q: {question}").unwrap_err().contains("{instruction}"));
        let err = PromptTemplate::parse("{instruction} {context}").unwrap_err();
        assert!(err.contains("{context}"), "{err}");
        assert!(PromptTemplate::parse("json {\"a\": 1} {instruction}").is_ok());
        assert_eq!(PromptTemplate::parse("phi3").unwrap(), PromptTemplate::Phi3);
    }
}
