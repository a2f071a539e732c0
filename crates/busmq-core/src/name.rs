//! Queue names: validated once at the edge, then trusted everywhere.

use std::fmt;

use crate::{Error, Limits, Result};

/// Appended to a queue's name to name its dead-letter queue.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// A valid queue name: 1..=`max_name_len` bytes of `[A-Za-z0-9._:-]`.
///
/// The character set keeps names safe as store keys, URL path segments and
/// ZeroMQ topic prefixes without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// Validates `name` against `limits`.
    pub fn parse(name: &str, limits: &Limits) -> Result<Self> {
        let invalid = |reason| {
            Err(Error::InvalidName {
                name: name.chars().take(64).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return invalid("empty");
        }
        if name.len() > limits.max_name_len {
            return invalid("too long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return invalid("only A-Z a-z 0-9 . _ : - are allowed");
        }
        Ok(QueueName(name.to_owned()))
    }

    /// The queue that receives this queue's dead letters: the name with
    /// [`DEAD_LETTER_SUFFIX`] appended. Derived, so not checked against a
    /// length limit; callers that let users name it check it themselves.
    pub fn dead_letters(&self) -> QueueName {
        QueueName(format!("{}{DEAD_LETTER_SUFFIX}", self.0))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        let l = Limits::default();
        assert!(QueueName::parse("orders.eu-1:v2_x", &l).is_ok());
        assert!(QueueName::parse("", &l).is_err());
        assert!(QueueName::parse("a b", &l).is_err());
        assert!(QueueName::parse("ü", &l).is_err());
        assert!(QueueName::parse(&"x".repeat(201), &l).is_err());
        assert!(QueueName::parse(&"x".repeat(200), &l).is_ok());
        let q = QueueName::parse("jobs", &l).unwrap();
        assert_eq!(q.dead_letters().as_str(), "jobs.dlq");
    }
}
