//! The gateway's flags, shared by the `busmq-http` binary and `busmq serve`
//! (which runs the gateway in its own process), so both take the same
//! options under the same names and environment variables.

use std::time::Duration;

use crate::{Config, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_LEASES, auth};

/// How the HTTP gateway serves (everything but where it listens and which
/// broker it talks to, which each binary names its own way).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Seconds a message from GET /message/next stays leased before it goes
    /// back to the front of its queue (fractions allowed, up to 12 hours).
    #[arg(long, env = "BUSMQ_HTTP_VISIBILITY_TIMEOUT", default_value_t = 30.0)]
    pub visibility_timeout: f64,
    /// The queue of the HTTP routes without /queues/:name.
    #[arg(long, env = "BUSMQ_HTTP_DEFAULT_QUEUE", default_value = "default")]
    pub default_queue: String,
    /// Largest HTTP request body in bytes (413 above).
    #[arg(long, env = "BUSMQ_HTTP_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most leases tracked at once for dones that name only an id; GET
    /// /message/next answers 503 while that many are outstanding.
    #[arg(long, env = "BUSMQ_HTTP_MAX_LEASES", default_value_t = DEFAULT_MAX_LEASES)]
    pub max_leases: usize,
    /// A bearer token every HTTP request but /healthz and /readyz must
    /// carry (`Authorization: Bearer <token>`); none by default. Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, env = "BUSMQ_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl GatewayArgs {
    /// The configuration these flags name.
    ///
    /// # Errors
    ///
    /// A value out of its range, worded for the user.
    pub fn config(&self) -> Result<Config, String> {
        let seconds = self.visibility_timeout;
        if !(0.001..=12.0 * 3600.0).contains(&seconds) {
            return Err(format!(
                "--visibility-timeout must be from 0.001 to 43200 seconds, not {seconds}"
            ));
        }
        if self.max_body_bytes < 1 {
            return Err("--max-body-bytes must be at least 1".to_owned());
        }
        if self.max_leases < 1 {
            return Err("--max-leases must be at least 1".to_owned());
        }
        Ok(Config {
            visibility_timeout: Duration::from_secs_f64(seconds),
            default_queue: self.default_queue.clone(),
            max_body_bytes: self.max_body_bytes,
            max_leases: self.max_leases,
            token: auth::Token::new(self.token.as_deref()),
        })
    }
}

/// Where a gateway run inside another binary (`busmq serve`) listens: an
/// address, or `off` for no gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        busmq_server::parse_listen_or_off(s).map(HttpListen)
    }
}
