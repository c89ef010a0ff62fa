//! The chat template: `<|system|>…<|user|>…<|assistant|>…<|endoftext|>`. Role markers are
//! special tokens; only assistant replies and the marker that ends them are scored in SFT, so
//! the model learns to answer and to stop, not to imitate users.

use crate::MlError;
use crate::data::Example;
use crate::tokenizer::{ASSISTANT, END_OF_TEXT, SYSTEM, USER};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn marker(self) -> &'static str {
        match self {
            Role::System => SYSTEM,
            Role::User => USER,
            Role::Assistant => ASSISTANT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One line of an SFT file: `{"messages": [...]}` or `{"prompt": …, "response": …}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Chat { messages: Vec<Message> },
    Pair { prompt: String, response: String },
}

/// One SFT record, `{"messages": [...]}` or `{"prompt": …, "response": …}`, as a conversation
/// with at least one assistant reply; the error says what is wrong with it.
pub fn parse_record(line: &str) -> Result<Vec<Message>, String> {
    let messages = match serde_json::from_str::<Line>(line) {
        Ok(Line::Chat { messages }) => messages,
        Ok(Line::Pair { prompt, response }) => vec![
            Message::new(Role::User, prompt),
            Message::new(Role::Assistant, response),
        ],
        Err(_) => {
            return Err(
                "expected {\"messages\": [{\"role\", \"content\"}…]} or {\"prompt\", \"response\"}"
                    .into(),
            );
        }
    };
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant message to learn from".into());
    }
    Ok(messages)
}

/// Reads SFT conversations from JSON lines; a bad line is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<Vec<Message>>, MlError> {
    let text = std::fs::read_to_string(path).map_err(MlError::io(path))?;
    let conversations: Vec<Vec<Message>> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            parse_record(line)
                .map_err(|why| MlError::Data(format!("{}:{}: {why}", path.display(), i + 1)))
        })
        .collect::<Result<_, _>>()?;
    if conversations.is_empty() {
        return Err(MlError::Empty(format!(
            "{} has no conversations",
            path.display()
        )));
    }
    Ok(conversations)
}

fn special(tokenizer: &Tokenizer, token: &str) -> Result<u32, MlError> {
    tokenizer
        .token_to_id(token)
        .ok_or_else(|| MlError::Tokenizer(format!("the tokenizer has no {token} token")))
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, MlError> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| MlError::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec())
}

/// A whole conversation as ids, scoring assistant replies and the token after each.
pub fn render(tokenizer: &Tokenizer, messages: &[Message]) -> Result<Example, MlError> {
    let mut example = Example {
        ids: vec![],
        scored: vec![],
    };
    for message in messages {
        example.ids.push(special(tokenizer, message.role.marker())?);
        // The marker after a reply (the next role, or end-of-text) ends it: score it too.
        example
            .scored
            .push(example.scored.last().copied().unwrap_or(false));
        let content = encode(tokenizer, &message.content)?;
        let scored = message.role == Role::Assistant;
        example
            .scored
            .extend(std::iter::repeat_n(scored, content.len()));
        example.ids.extend(content);
    }
    example.ids.push(special(tokenizer, END_OF_TEXT)?);
    example
        .scored
        .push(messages.last().is_some_and(|m| m.role == Role::Assistant));
    Ok(example)
}

/// The prompt for the model's next reply: the conversation, then the assistant marker.
pub fn prompt(tokenizer: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>, MlError> {
    let mut ids = render(tokenizer, messages)?.ids;
    ids.pop(); // end-of-text
    ids.push(special(tokenizer, ASSISTANT)?);
    Ok(ids)
}

/// A prompt in at most `keep` tokens (one or more): a long conversation keeps its end,
/// where the question is.
pub fn keep_end(prompt: &[u32], keep: usize) -> &[u32] {
    &prompt[prompt.len().saturating_sub(keep.max(1))..]
}

/// The last user message of a conversation and the assistant's reply to it.
pub fn last_exchange(conversation: &[Message]) -> Option<(&str, &str)> {
    let reply = conversation
        .iter()
        .rposition(|m| m.role == Role::Assistant)?;
    let prompt = conversation[..reply]
        .iter()
        .rev()
        .find(|m| m.role == Role::User)?;
    Some((&prompt.content, &conversation[reply].content))
}

/// Tokens that end an assistant reply.
pub fn stop_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    [END_OF_TEXT, USER, SYSTEM]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::train_chars;

    #[test]
    fn only_assistant_replies_and_their_end_are_scored() {
        let tokenizer = train_chars("abcdefghijklmnopqrstuvwxyz ?").unwrap();
        let messages = vec![
            Message::new(Role::System, "be"),
            Message::new(Role::User, "hi?"),
            Message::new(Role::Assistant, "yo"),
        ];
        let example = render(&tokenizer, &messages).unwrap();
        // <|system|> b e <|user|> h i ? <|assistant|> y o <|endoftext|>
        assert_eq!(example.ids.len(), 11);
        assert_eq!(example.ids[0], 1);
        assert_eq!(example.ids[10], 0);
        let scored: Vec<usize> = (0..11).filter(|&i| example.scored[i]).collect();
        assert_eq!(
            scored,
            vec![8, 9, 10],
            "y, o and the end-of-text after them"
        );
        let prompt = prompt(&tokenizer, &messages[..2]).unwrap();
        assert_eq!(prompt, example.ids[..8]);
    }

    #[test]
    fn jsonl_in_both_shapes_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\":\"q\",\"response\":\"a\"}\n\n{\"messages\":[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":\"v\"}]}\n",
        )
        .unwrap();
        let conversations = read_jsonl(&path).unwrap();
        assert_eq!(conversations.len(), 2);
        assert_eq!(conversations[0][1], Message::new(Role::Assistant, "a"));
        std::fs::write(
            &path,
            "{\"prompt\":\"q\",\"response\":\"a\"}\n{\"oops\":1}\n",
        )
        .unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("sft.jsonl:2"), "{err}");
        std::fs::write(
            &path,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}\n",
        )
        .unwrap();
        assert!(
            read_jsonl(&path)
                .unwrap_err()
                .to_string()
                .contains("no assistant")
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_jsonl(&path), Err(MlError::Empty(_))));
    }
}
