//! Parsing a Redis backend spec (`--backend` / `--storage`) into a
//! [`RedisConfig`]. The syntax is described in the [module docs](super).

use std::fmt;
use std::time::Duration;

use ::redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::{Error, Result};

/// Default port of a Redis server.
pub const DEFAULT_PORT: u16 = 6379;
/// Default port of a Redis Sentinel.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// Every scheme a Redis spec may start with.
pub const SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
];

/// Whether `spec` names a Redis backend (it starts with a Redis scheme).
pub fn is_redis_spec(spec: &str) -> bool {
    let spec = spec.trim_start();
    SCHEMES.iter().any(|s| spec.starts_with(s))
}

/// One Redis endpoint: how to connect, and how to name it in logs and
/// errors without its password.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) info: ConnectionInfo,
    redacted: String,
}

impl Endpoint {
    fn parse(url: &str, what: &str) -> Result<Self> {
        let redacted = redact(url);
        let info = url.into_connection_info().map_err(|e| {
            Error::InvalidArgument(format!(
                "{what} `{redacted}` is not a valid Redis URL: {}",
                describe(&e)
            ))
        })?;
        if matches!(info.addr(), ConnectionAddr::Unix(_)) {
            return Err(Error::InvalidArgument(format!(
                "{what} `{redacted}`: unix sockets are not supported, use redis:// or rediss://"
            )));
        }
        Ok(Endpoint { info, redacted })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `host:port/db`: the identity of a shard for rendezvous hashing. It
    /// does not change with credentials or TLS settings.
    pub fn shard_id(&self) -> String {
        let (host, port) = host_port(self.info.addr());
        format!("{host}:{port}/{}", self.info.redis_settings().db())
    }

    /// The same credentials, database and TLS mode at another address.
    pub(crate) fn at(&self, host: &str, port: u16) -> Endpoint {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let scheme = if matches!(addr, ConnectionAddr::TcpTls { .. }) {
            "rediss"
        } else {
            "redis"
        };
        let db = self.info.redis_settings().db();
        Endpoint {
            info: self.info.clone().set_addr(addr),
            redacted: format!("{scheme}://{host}:{port}/{db}"),
        }
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        // The redacted URL leaves out the password; compare it too.
        self.redacted == other.redacted
            && self.info.redis_settings().password() == other.info.redis_settings().password()
    }
}

impl Eq for Endpoint {}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

fn host_port(addr: &ConnectionAddr) -> (String, u16) {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            (host.clone(), *port)
        }
        ConnectionAddr::Unix(path) => (path.display().to_string(), 0),
        other => (format!("{other:?}"), 0),
    }
}

/// How the Redis deployment is laid out.
#[derive(Clone, PartialEq, Eq)]
pub enum Layout {
    /// One Redis server.
    Standalone(Endpoint),
    /// Independent Redis servers; each queue lives on one of them, chosen
    /// by rendezvous hashing of its name.
    Sharded(Vec<Endpoint>),
    /// The master of a set monitored by Redis Sentinel.
    Sentinel {
        /// The sentinels to ask where the master is.
        sentinels: Vec<Endpoint>,
        /// The name of the monitored set (`sentinel monitor <name> ...`).
        master: String,
        /// Credentials, database and TLS mode for the master; its address
        /// is a placeholder replaced by what the sentinels answer.
        node: Endpoint,
    },
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<Endpoint>),
}

/// A parsed Redis backend spec. `Debug` and `Display` never show
/// passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// How the deployment is laid out.
    pub layout: Layout,
    /// A push is acknowledged only once this many replicas have it
    /// (`WAIT`); 0 (the default) acknowledges what the master has.
    pub wait_replicas: u32,
    /// How long a push waits for [`RedisConfig::wait_replicas`] before it
    /// fails with UNAVAILABLE.
    pub wait_timeout: Duration,
}

/// Default of [`RedisConfig::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(1000);

impl RedisConfig {
    fn new(layout: Layout) -> Self {
        RedisConfig {
            layout,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

impl RedisConfig {
    /// Parses a spec; see the [module docs](super) for the syntax. Errors
    /// name the part that is wrong.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if let Some(rest) = strip_scheme(spec, "redis+sentinel://", "rediss+sentinel://") {
            return parse_sentinel(rest.0, rest.1);
        }
        if let Some(rest) = strip_scheme(spec, "redis+cluster://", "rediss+cluster://") {
            return parse_cluster(rest.0, rest.1);
        }
        if !is_redis_spec(spec) {
            return Err(Error::InvalidArgument(format!(
                "`{}` is not a Redis spec: expected redis://, rediss://, redis+sentinel:// or redis+cluster://",
                redact(spec)
            )));
        }
        let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
        if parts.len() == 1 {
            let endpoint = Endpoint::parse(parts[0], "Redis URL")?;
            return Ok(RedisConfig::new(Layout::Standalone(endpoint)));
        }
        let mut shards: Vec<Endpoint> = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let what = format!("shard #{} of {}", i + 1, parts.len());
            if part.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{what} is empty (a stray comma in the list of Redis URLs?)"
                )));
            }
            if !part.starts_with("redis://") && !part.starts_with("rediss://") {
                return Err(Error::InvalidArgument(format!(
                    "{what} `{}` must start with redis:// or rediss:// (every shard is a full URL)",
                    redact(part)
                )));
            }
            let endpoint = Endpoint::parse(part, &what)?;
            if let Some(dup) = shards.iter().find(|s| s.shard_id() == endpoint.shard_id()) {
                return Err(Error::InvalidArgument(format!(
                    "{what} `{}` is listed twice (same host, port and database as `{}`)",
                    endpoint.redacted(),
                    dup.redacted()
                )));
            }
            shards.push(endpoint);
        }
        Ok(RedisConfig::new(Layout::Sharded(shards)))
    }

    /// A short name of the layout: standalone, sharded, sentinel, cluster.
    pub fn layout_name(&self) -> &'static str {
        match self.layout {
            Layout::Standalone(_) => "standalone",
            Layout::Sharded(_) => "sharded",
            Layout::Sentinel { .. } => "sentinel",
            Layout::Cluster(_) => "cluster",
        }
    }
}

impl fmt::Display for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |endpoints: &[Endpoint]| {
            endpoints
                .iter()
                .map(|e| e.redacted().to_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.layout {
            Layout::Standalone(e) => write!(f, "{e}"),
            Layout::Sharded(shards) => f.write_str(&list(shards)),
            Layout::Sentinel {
                sentinels, master, ..
            } => write!(f, "sentinel {master} via {}", list(sentinels)),
            Layout::Cluster(nodes) => write!(f, "cluster via {}", list(nodes)),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis({} {self})", self.layout_name())
    }
}

/// `(rest, tls)` when `spec` starts with one of the two schemes.
fn strip_scheme<'a>(spec: &'a str, plain: &str, tls: &str) -> Option<(&'a str, bool)> {
    if let Some(rest) = spec.strip_prefix(plain) {
        Some((rest, false))
    } else {
        spec.strip_prefix(tls).map(|rest| (rest, true))
    }
}

/// Splits `[userinfo@]hosts[/path]` into its parts.
fn split_authority(rest: &str) -> (Option<&str>, &str, Option<&str>) {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..], path),
        None => (None, authority, path),
    }
}

/// Parses `host[:port]`, naming `what` in errors.
fn parse_host_port(s: &str, default_port: u16, what: &str) -> Result<(String, u16)> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what} is empty (a stray comma in the host list?)"
        )));
    }
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        // [ipv6]:port
        let end = bracketed.find(']').ok_or_else(|| {
            Error::InvalidArgument(format!("{what} `{s}`: unclosed `[` in an IPv6 address"))
        })?;
        let host = &bracketed[..end];
        let after = &bracketed[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "{what} `{s}`: unexpected `{after}` after the address"
                )));
            }
        };
        (host, port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} `{s}` has no host")));
    }
    if host.contains(['/', '@', '?', '#', ' ']) {
        return Err(Error::InvalidArgument(format!(
            "{what} `{s}`: `{host}` is not a host name"
        )));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{what} `{s}`: `{p}` is not a port (1-65535)"
                )));
            }
        },
    };
    Ok((host.to_owned(), port))
}

/// A template endpoint carrying credentials, database and TLS mode.
fn template(userinfo: Option<&str>, tls: bool, db: i64, host: &str, port: u16) -> Result<Endpoint> {
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Endpoint::parse(
        &format!("{scheme}://{auth}{host}:{port}/{db}"),
        "Redis node",
    )
}

fn parse_sentinel(rest: &str, tls: bool) -> Result<RedisConfig> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (userinfo, hosts, path) = split_authority(rest);
    let path = path.unwrap_or("");
    let mut segments = path.split('/');
    let master = segments.next().unwrap_or("").trim();
    if master.is_empty() {
        return Err(Error::InvalidArgument(
            "Redis Sentinel spec has no master name: expected redis+sentinel://host:26379,host:26379/<master-name>[/<db>]".into(),
        ));
    }
    if master.contains(['?', '#', ' ']) {
        return Err(Error::InvalidArgument(format!(
            "Redis Sentinel master name `{master}` is not a name"
        )));
    }
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "Redis Sentinel spec: database `{db}` is not a number"
            ))
        })?,
    };
    if let Some(extra) = segments.next() {
        return Err(Error::InvalidArgument(format!(
            "Redis Sentinel spec: unexpected `/{extra}` after the master name and database"
        )));
    }
    let host_list: Vec<&str> = hosts.split(',').collect();
    let mut sentinels = Vec::with_capacity(host_list.len());
    for (i, h) in host_list.iter().enumerate() {
        let what = format!("sentinel #{} of {}", i + 1, host_list.len());
        let (host, port) = parse_host_port(h, DEFAULT_SENTINEL_PORT, &what)?;
        // Sentinels are asked without credentials; the userinfo is for the
        // data nodes.
        sentinels.push(template(None, tls, 0, &host, port)?);
    }
    let node = template(userinfo, tls, db, "127.0.0.1", DEFAULT_PORT)?;
    let mut config = RedisConfig::new(Layout::Sentinel {
        sentinels,
        master: master.to_owned(),
        node,
    });
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u32>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "Redis Sentinel spec: `{key}={value}` needs a whole number"
                ))
            })
        };
        match key {
            "wait_replicas" => config.wait_replicas = number()?,
            "wait_timeout_ms" => config.wait_timeout = Duration::from_millis(number()?.into()),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "Redis Sentinel spec: unknown option `{other}` (known: wait_replicas, wait_timeout_ms)"
                )));
            }
        }
    }
    if config.wait_timeout.is_zero() || config.wait_timeout >= super::conn::RESPONSE_TIMEOUT {
        return Err(Error::InvalidArgument(format!(
            "Redis Sentinel spec: wait_timeout_ms must be between 1 and {} ms",
            super::conn::RESPONSE_TIMEOUT.as_millis() - 1
        )));
    }
    Ok(config)
}

fn parse_cluster(rest: &str, tls: bool) -> Result<RedisConfig> {
    let (userinfo, hosts, path) = split_authority(rest);
    match path {
        None | Some("") | Some("0") => {}
        Some(p) => {
            return Err(Error::InvalidArgument(format!(
                "Redis Cluster spec: unexpected `/{p}` (a cluster has only database 0)"
            )));
        }
    }
    let host_list: Vec<&str> = hosts.split(',').collect();
    let mut nodes = Vec::with_capacity(host_list.len());
    for (i, h) in host_list.iter().enumerate() {
        let what = format!("cluster node #{} of {}", i + 1, host_list.len());
        let (host, port) = parse_host_port(h, DEFAULT_PORT, &what)?;
        nodes.push(template(userinfo, tls, 0, &host, port)?);
    }
    Ok(RedisConfig::new(Layout::Cluster(nodes)))
}

/// `url` with the password of its userinfo replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(url.len());
    let authority = &url[start..end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => userinfo.to_owned(),
            };
            format!("{}{shown}{}", &url[..start], &url[start + at..])
        }
        None => url.to_owned(),
    }
}

/// A Redis error as one line, without the crate's kind prefix noise.
pub(crate) fn describe(e: &::redis::RedisError) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str) -> String {
        match RedisConfig::parse(spec) {
            Ok(c) => panic!("{spec} parsed as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn standalone() {
        let c = RedisConfig::parse("redis://127.0.0.1:6380/2").unwrap();
        let Layout::Standalone(e) = &c.layout else {
            panic!("{c:?}")
        };
        assert_eq!(e.shard_id(), "127.0.0.1:6380/2");
        let c = RedisConfig::parse("rediss://user:secret@example.com").unwrap();
        assert_eq!(c.layout_name(), "standalone");
        let shown = format!("{c:?} {c}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("user:***@example.com"), "{shown}");
    }

    #[test]
    fn sharded() {
        let c = RedisConfig::parse("redis://a:1, redis://:pw@b:2/3").unwrap();
        let Layout::Sharded(shards) = &c.layout else {
            panic!("{c:?}")
        };
        let ids: Vec<String> = shards.iter().map(Endpoint::shard_id).collect();
        assert_eq!(ids, ["a:1/0", "b:2/3"]);
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn sentinel() {
        let c = RedisConfig::parse("redis+sentinel://:pw@s1:26380,s2/mymaster/4").unwrap();
        let Layout::Sentinel {
            sentinels,
            master,
            node,
        } = &c.layout
        else {
            panic!("{c:?}")
        };
        assert_eq!(master, "mymaster");
        let ids: Vec<String> = sentinels.iter().map(Endpoint::shard_id).collect();
        assert_eq!(ids, ["s1:26380/0", "s2:26379/0"]);
        assert_eq!(node.info.redis_settings().db(), 4);
        assert_eq!(node.info.redis_settings().password(), Some("pw"));
        let m = node.at("10.0.0.1", 7000);
        assert_eq!(m.shard_id(), "10.0.0.1:7000/4");
        assert_eq!(m.info.redis_settings().password(), Some("pw"));
        assert!(!format!("{c:?} {m:?}").contains("pw"));
        assert_eq!(c.wait_replicas, 0);
        let c = RedisConfig::parse("redis+sentinel://s1/m?wait_replicas=1&wait_timeout_ms=500")
            .unwrap();
        assert_eq!(c.wait_replicas, 1);
        assert_eq!(c.wait_timeout, Duration::from_millis(500));
        assert!(err("redis+sentinel://s1/m?wait=1").contains("unknown option `wait`"));
        assert!(err("redis+sentinel://s1/m?wait_replicas=x").contains("whole number"));
        assert!(err("redis+sentinel://s1/m?wait_timeout_ms=0").contains("between"));
    }

    #[test]
    fn cluster() {
        let c = RedisConfig::parse("rediss+cluster://u:p@n1:7000,n2:7001,n3").unwrap();
        let Layout::Cluster(nodes) = &c.layout else {
            panic!("{c:?}")
        };
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].shard_id(), "n3:6379/0");
        assert!(matches!(
            nodes[0].info.addr(),
            ConnectionAddr::TcpTls { .. }
        ));
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert!(err("redis://a:1,,redis://b:2").contains("shard #2 of 3 is empty"));
        assert!(err("redis://a:1,b:2").contains("shard #2 of 2 `b:2` must start with"));
        assert!(err("redis://a:1,redis://a:1").contains("listed twice"));
        assert!(err("redis://a:99999").contains("redis://a:99999"));
        assert!(err("redis://:secret@a:xx").contains(":***@a:xx"));
        assert!(!err("redis://:secret@a:xx").contains("secret"));
        assert!(err("redis+sentinel://s1:26379").contains("no master name"));
        assert!(err("redis+sentinel://s1:nope/m").contains("sentinel #1 of 1 `s1:nope`"));
        assert!(err("redis+sentinel://s1,,s2/m").contains("sentinel #2 of 3 is empty"));
        assert!(err("redis+sentinel://s1/m/x").contains("database `x`"));
        assert!(err("redis+cluster://n1:7000/3").contains("only database 0"));
        assert!(err("redis+cluster://n1:0").contains("not a port"));
        assert!(err("http://x").contains("not a Redis spec"));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:p@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("redis://:p@h"), "redis://:***@h");
        assert_eq!(redact("redis://u@h"), "redis://u@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert!(is_redis_spec(" redis+cluster://x"));
        assert!(!is_redis_spec("memory"));
    }
}
