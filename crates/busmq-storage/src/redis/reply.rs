//! Decoding what Redis answers: a script's status and items, message
//! members (8-byte big-endian id, then the payload), and connection
//! failures turned into errors.

use ::redis::{RedisResult, Value};
use bytes::Bytes;

use super::config;
use super::conn::{self, Node};
use std::time::Duration;

use crate::{Error, LeasedMessage, Message, QueueInfo, Result};

/// A script's answer, by status.
pub(super) enum Outcome {
    Ok(Vec<Value>),
    Missing,
    UnknownAck,
    Locked,
    LeaseExpired,
    UnknownLease,
    LeasesActive,
}

/// A reply (or the lack of one in time) from connection `generation` of
/// `node` as a result: a broken connection is reported to the supervisor.
pub(super) fn settle<T>(
    node: &Node,
    generation: u64,
    reply: std::result::Result<RedisResult<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    match reply {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let c = conn::classify(node.label(), &e);
            if c.reconnect {
                node.mark_broken(generation, &config::describe(&e));
            }
            Err(c.error)
        }
        Err(_) => {
            let why = format!("no answer within {:?}", conn::CALL_TIMEOUT);
            node.mark_broken(generation, &why);
            Err(Error::Unavailable(format!(
                "Redis at {}: {why}",
                node.label()
            )))
        }
    }
}

/// The state of a queue from the info script's answer: `None` when the
/// queue does not exist.
pub(super) fn info_reply(outcome: Outcome) -> Result<Option<QueueInfo>> {
    let v = match outcome {
        Outcome::Ok(v) => v,
        Outcome::Missing => return Ok(None),
        _ => return Err(unexpected("info", &"a status")),
    };
    let field = |i: usize| uint(v.get(i), "info");
    Ok(Some(QueueInfo {
        count: field(0)?,
        ttl: Duration::from_millis(field(1)?),
        attachments: field(2)?,
        pending: field(3)?,
        next_id: field(4)?,
        pushed: field(5)?,
        consumed: field(6)?,
        reliable_consumer: field(7)? == 1,
        leased: field(8)?,
        max_deliveries: u32::try_from(field(9)?).unwrap_or(u32::MAX),
    }))
}

pub(super) fn unexpected(what: &str, v: &impl std::fmt::Debug) -> Error {
    let shown: String = format!("{v:?}").chars().take(200).collect();
    Error::Internal(format!("unexpected reply from Redis to {what}: {shown}"))
}

pub(super) fn int(v: Option<&Value>, what: &str) -> Result<i64> {
    match v {
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(what, b)),
        other => Err(unexpected(what, &other)),
    }
}

pub(super) fn uint(v: Option<&Value>, what: &str) -> Result<u64> {
    let i = int(v, what)?;
    u64::try_from(i).map_err(|_| unexpected(what, &i))
}

/// Decodes a lease script's flat `{member, attempt, ...}` array.
pub(super) fn leased_members(v: Option<Value>) -> Result<Vec<LeasedMessage>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        other => return Err(unexpected("lease", &other)),
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let Some(member) = items.next() {
        let attempt = int(items.next().as_ref(), "a lease attempt")?;
        let message = members(Some(Value::Array(vec![member])), "lease")?
            .pop()
            .ok_or_else(|| unexpected("lease", &"an empty member"))?;
        out.push(LeasedMessage {
            message,
            attempt: u32::try_from(attempt).map_err(|_| unexpected("lease", &attempt))?,
        });
    }
    Ok(out)
}

pub(super) fn members(v: Option<Value>, what: &str) -> Result<Vec<Message>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        Some(Value::Nil) | None => return Ok(Vec::new()),
        other => return Err(unexpected(what, &other)),
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::BulkString(b) if b.len() >= 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&b[..8]);
                Ok(Message {
                    id: u64::from_be_bytes(id),
                    payload: Bytes::from(b).slice(8..),
                })
            }
            other => Err(unexpected(what, &other)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_decode_and_reject_garbage() {
        let mut m = 7u64.to_be_bytes().to_vec();
        m.extend_from_slice(b"hi");
        let got = members(Some(Value::Array(vec![Value::BulkString(m)])), "t").unwrap();
        assert_eq!(got[0].id, 7);
        assert_eq!(got[0].payload, Bytes::from_static(b"hi"));
        assert!(members(Some(Value::Array(vec![Value::BulkString(vec![1])])), "t").is_err());
        assert!(members(Some(Value::Int(3)), "t").is_err());
    }
}
