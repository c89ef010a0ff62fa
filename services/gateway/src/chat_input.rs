//! Chat messages as OpenAI's clients send them: content as a string or a list of text parts,
//! the `developer` role as the system's; tools and function calls are refused by name.

use crate::api::ApiError;
use quark_ml::chat::{Message, Role};
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    /// OpenAI's newer name for instructions from the application.
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// A message's content: a string, or parts of which only text is understood.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// Absent or null only in an assistant's tool call, which is refused.
    pub content: Option<Content>,
}

/// The tool-calling fields of a chat request: any of them present is refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Tools {
    #[schema(schema_with = refused)]
    tools: Option<serde::de::IgnoredAny>,
    #[schema(schema_with = refused)]
    tool_choice: Option<serde::de::IgnoredAny>,
    #[schema(schema_with = refused)]
    functions: Option<serde::de::IgnoredAny>,
    #[schema(schema_with = refused)]
    function_call: Option<serde::de::IgnoredAny>,
}

/// A tool-calling field's schema: only null (absent) is accepted.
fn refused() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Null)
        .description(Some(
            "tool and function calling is not supported: only null",
        ))
        .build()
}

impl Tools {
    pub fn refuse(&self) -> Result<(), ApiError> {
        let named = [
            ("tools", self.tools.is_some()),
            ("tool_choice", self.tool_choice.is_some()),
            ("functions", self.functions.is_some()),
            ("function_call", self.function_call.is_some()),
        ];
        match named.iter().find(|(_, present)| *present) {
            Some((param, _)) => Err(ApiError::invalid(
                param,
                format!("{param}: tool and function calling is not supported"),
            )),
            None => Ok(()),
        }
    }
}

impl ChatMessage {
    /// The message in the model's chat template, or why it cannot be.
    pub fn into_message(self) -> Result<Message, ApiError> {
        let role = match self.role {
            ChatRole::System | ChatRole::Developer => Role::System,
            ChatRole::User => Role::User,
            ChatRole::Assistant => Role::Assistant,
            ChatRole::Tool | ChatRole::Function => {
                return Err(ApiError::invalid(
                    "messages",
                    "tool and function messages are not supported",
                ));
            }
        };
        let content = match self.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => parts
                .into_iter()
                .map(|part| match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => Ok(text),
                    (kind, _) => Err(ApiError::invalid(
                        "messages",
                        format!("content parts of type {kind:?} are not supported: text only"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join("\n"),
            None => {
                return Err(ApiError::invalid(
                    "messages",
                    "a message needs content (tool calls are not supported)",
                ));
            }
        };
        Ok(Message::new(role, content))
    }
}
