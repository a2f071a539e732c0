//! How a channel and its roles map onto queue names.

use busmq_core::{Limits, QueueName};
use tonic::Status;

use crate::queues::invalid;

/// Every channel queue is named `channel:<name>:<role>`, so channel queues
/// are easy to tell apart from plain queues in `busmq stats`.
const PREFIX: &str = "channel:";

/// The role a peer consumes when it names none (node-busmq's default).
pub const DEFAULT_LOCAL: &str = "local";
/// The role a peer sends to when it names none.
pub const DEFAULT_REMOTE: &str = "remote";

/// The longest role name.
pub const MAX_ROLE_LEN: usize = 64;

/// A validated role (endpoint) name: 1..=64 characters of `[A-Za-z0-9_-]`.
/// No `:` and no `.`, so `channel:<name>:<role>` splits unambiguously at
/// its last `:` and a role never looks like a `.dlq` suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role(String);

impl Role {
    /// Validates `role`; empty means `default`.
    pub fn parse(role: &str, default: &str) -> Result<Role, Status> {
        let role = if role.is_empty() { default } else { role };
        if role.is_empty() {
            return Err(invalid("a role (endpoint) name is required"));
        }
        if role.len() > MAX_ROLE_LEN {
            return Err(invalid(format!(
                "unknown role {:?}: role names are at most {MAX_ROLE_LEN} characters",
                role.chars().take(MAX_ROLE_LEN).collect::<String>()
            )));
        }
        if !role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(invalid(format!(
                "unknown role {role:?}: role names are made of A-Z a-z 0-9 _ -"
            )));
        }
        Ok(Role(role.to_owned()))
    }

    /// The role as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The inbound queue of `role` on channel `name`, or why there is none.
pub fn endpoint_queue(name: &str, role: &Role, limits: &Limits) -> Result<QueueName, Status> {
    if name.is_empty() {
        return Err(invalid("channel name is empty"));
    }
    let queue = format!("{PREFIX}{name}:{}", role.as_str());
    QueueName::parse(&queue, limits).map_err(|e| {
        invalid(format!(
            "invalid channel name {:?}: {e} (a channel's queues are named \
             \"{PREFIX}<name>:<role>\", at most {} characters of A-Z a-z 0-9 . _ : -)",
            name.chars().take(64).collect::<String>(),
            limits.max_name_len
        ))
    })
}

/// The two queues of one peer's session: the one it consumes and the one it
/// pushes to.
#[derive(Debug, Clone)]
pub struct SessionQueues {
    pub inbound: QueueName,
    pub outbound: QueueName,
}

impl SessionQueues {
    /// The queues of a peer with roles `local` and `remote` on `name`.
    pub fn new(
        name: &str,
        local: &str,
        remote: &str,
        limits: &Limits,
    ) -> Result<SessionQueues, Status> {
        let local = Role::parse(local, DEFAULT_LOCAL)?;
        let remote = Role::parse(remote, DEFAULT_REMOTE)?;
        if local == remote {
            return Err(invalid(format!(
                "local and remote roles are both {:?}; a peer sends to the other role, so \
                 they must differ",
                local.as_str()
            )));
        }
        Ok(SessionQueues {
            inbound: endpoint_queue(name, &local, limits)?,
            outbound: endpoint_queue(name, &remote, limits)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn default_roles_name_two_queues() {
        let q = SessionQueues::new("bar", "", "", &Limits::default()).unwrap();
        assert_eq!(q.inbound.as_str(), "channel:bar:local");
        assert_eq!(q.outbound.as_str(), "channel:bar:remote");
        let q = SessionQueues::new("zoo", "server", "client", &Limits::default()).unwrap();
        assert_eq!(q.inbound.as_str(), "channel:zoo:server");
        assert_eq!(q.outbound.as_str(), "channel:zoo:client");
    }

    #[test]
    fn bad_roles_and_names_are_invalid_arguments() {
        let limits = Limits::default();
        let long_role = "r".repeat(MAX_ROLE_LEN + 1);
        let long_name = "n".repeat(limits.max_name_len);
        let cases = [
            ("bar", "a:b", "remote"),
            ("bar", "local", "x.dlq"),
            ("bar", "same", "same"),
            ("bar", "local", "sp ace"),
            ("bar", long_role.as_str(), "remote"),
            ("", "local", "remote"),
            ("b/ar", "local", "remote"),
            (long_name.as_str(), "local", "remote"),
        ];
        for (name, local, remote) in cases {
            let err = SessionQueues::new(name, local, remote, &limits).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{name} {local} {remote}");
        }
    }
}
