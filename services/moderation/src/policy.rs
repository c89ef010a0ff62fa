//! What happens to a text a moderator flags, category by category: blocked (the caller answers
//! with a refusal instead), redacted (the flagged sentences are replaced) or flagged (passed
//! on, marked). The strictest action among the flagged categories wins.

use crate::{Moderation, ModerationError, Moderator};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ordered from the mildest to the strictest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Flag,
    Redact,
    Block,
}

/// What replaces a redacted sentence.
pub const REDACTED: &str = "[redacted]";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Per category (OpenAI's names); a category not named takes `default`.
    pub actions: BTreeMap<String, Action>,
    pub default: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            actions: BTreeMap::new(),
            default: Action::Block,
        }
    }
}

/// The outcome for one text.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Flag {
        categories: Vec<String>,
    },
    Redact {
        categories: Vec<String>,
        text: String,
    },
    Block {
        categories: Vec<String>,
    },
}

impl Verdict {
    /// The categories that caused it (none for a pass).
    pub fn categories(&self) -> &[String] {
        match self {
            Verdict::Pass => &[],
            Verdict::Flag { categories }
            | Verdict::Redact { categories, .. }
            | Verdict::Block { categories } => categories,
        }
    }
}

impl Policy {
    /// Every category named must be one of OpenAI's.
    pub fn validate(&self) -> Result<(), ModerationError> {
        self.actions
            .keys()
            .try_for_each(|name| crate::category(name).map(|_| ()))
    }

    pub fn action(&self, category: &str) -> Action {
        self.actions.get(category).copied().unwrap_or(self.default)
    }

    /// The verdict on `text`: the whole text and each of its sentences are moderated (a
    /// harmful sentence in a long, harmless answer is found on its own), the categories
    /// flagged in any of them counted; when the strictest action is to redact, the sentences
    /// flagged in a redacted category are replaced (the whole text, when no one sentence is
    /// flagged on its own).
    pub fn apply(&self, moderator: &dyn Moderator, text: &str) -> Result<Verdict, ModerationError> {
        let pieces = sentences(text);
        let mut texts = vec![text];
        if pieces.len() > 1 {
            texts.extend(&pieces);
        }
        let read = moderator.moderate(&texts)?;
        let mut categories: Vec<String> = Vec::new();
        for c in read.iter().flat_map(|m| &m.flagged) {
            if !categories.contains(c) {
                categories.push(c.clone());
            }
        }
        let Some(strictest) = categories.iter().map(|c| self.action(c)).max() else {
            return Ok(Verdict::Pass);
        };
        Ok(match strictest {
            Action::Block => Verdict::Block { categories },
            Action::Flag => Verdict::Flag { categories },
            Action::Redact => Verdict::Redact {
                text: self.redact(&pieces, read.get(1..).unwrap_or_default()),
                categories,
            },
        })
    }

    /// `pieces` with those whose reading is flagged in a redacted category replaced.
    fn redact(&self, pieces: &[&str], read: &[Moderation]) -> String {
        let redacts = |m: &Moderation| m.flagged.iter().any(|c| self.action(c) == Action::Redact);
        if !read.iter().any(redacts) {
            return REDACTED.to_string();
        }
        let kept: Vec<&str> = pieces
            .iter()
            .zip(read)
            .map(|(piece, m)| if redacts(m) { REDACTED } else { piece })
            .collect();
        kept.join(" ")
    }
}

/// Byte offsets just past each sentence end in `text`: a `.`, `!` or `?` followed by
/// whitespace, or a line break. (Text that stops after a `.` has not ended its sentence yet:
/// a stream may go on with "5".)
pub fn sentence_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let before_space = chars.peek().is_some_and(|(_, n)| n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && before_space) {
            ends.push(i + c.len_utf8());
        }
    }
    ends
}

/// `text` cut at its sentence ends, trimmed, without empty pieces.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut start = 0;
    let mut pieces = Vec::new();
    for end in sentence_ends(text).into_iter().chain([text.len()]) {
        pieces.push(text[start..end].trim());
        start = end;
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags a text in `violence` when it says "kill", in `sexual` when it says "nude".
    struct Words;

    impl Moderator for Words {
        fn name(&self) -> &str {
            "words"
        }
        fn categories(&self) -> &[String] {
            &[]
        }
        fn moderate(&self, texts: &[&str]) -> Result<Vec<Moderation>, ModerationError> {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut flagged = vec![];
                    for (word, category) in [("kill", "violence"), ("nude", "sexual")] {
                        if t.contains(word) {
                            flagged.push(category.to_string());
                        }
                    }
                    Moderation {
                        scores: Default::default(),
                        flagged,
                    }
                })
                .collect())
        }
    }

    fn policy(actions: &[(&str, Action)], default: Action) -> Policy {
        Policy {
            actions: actions.iter().map(|(c, a)| (c.to_string(), *a)).collect(),
            default,
        }
    }

    #[test]
    fn the_strictest_action_of_the_flagged_categories_wins() {
        let p = policy(&[("violence", Action::Flag)], Action::Block);
        assert_eq!(p.apply(&Words, "hello there").unwrap(), Verdict::Pass);
        assert_eq!(
            p.apply(&Words, "kill it").unwrap(),
            Verdict::Flag {
                categories: vec!["violence".into()]
            }
        );
        assert_eq!(
            p.apply(&Words, "kill the nude").unwrap(),
            Verdict::Block {
                categories: vec!["violence".into(), "sexual".into()]
            }
        );
    }

    #[test]
    fn redaction_replaces_only_the_flagged_sentences() {
        let p = policy(&[("violence", Action::Redact)], Action::Flag);
        let verdict = p
            .apply(&Words, "Good morning. Then kill him!\nThe end.")
            .unwrap();
        assert_eq!(
            verdict,
            Verdict::Redact {
                categories: vec!["violence".into()],
                text: "Good morning. [redacted] The end.".into()
            }
        );
    }

    #[test]
    fn sentences_end_at_punctuation_before_a_space_and_at_line_breaks() {
        assert_eq!(
            sentences("One. Two?Three! 3.5 is a number.\n\nLast"),
            ["One.", "Two?Three!", "3.5 is a number.", "Last"]
        );
        assert!(sentences("  \n ").is_empty());
    }

    #[test]
    fn a_policy_names_only_openai_categories() {
        assert!(
            policy(&[("violence", Action::Flag)], Action::Block)
                .validate()
                .is_ok()
        );
        let error = policy(&[("gore", Action::Flag)], Action::Block)
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "gore is not one of OpenAI's moderation categories"
        );
    }
}
