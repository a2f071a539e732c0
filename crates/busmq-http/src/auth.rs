//! Optional bearer-token authentication (`--token` / `BUSMQ_HTTP_TOKEN`).
//!
//! Checked by a middleware in front of every route, so a request without
//! the token is refused (401) before its body is read or the broker is
//! called. `/healthz` and `/readyz` stay open: probes of an orchestrator
//! carry no credentials, and they reveal nothing but liveness.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::HttpError;

/// The paths served without a token.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The token requests must carry, when one is configured.
#[derive(Clone)]
pub struct Token(Option<std::sync::Arc<[u8]>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: configurations end up in logs.
        let state = if self.0.is_some() { "set" } else { "none" };
        f.debug_tuple("Token").field(&state).finish()
    }
}

impl Token {
    /// `token`, or no authentication when it is `None` or empty.
    pub fn new(token: Option<&str>) -> Token {
        Token(
            token
                .filter(|t| !t.is_empty())
                .map(|t| std::sync::Arc::from(t.as_bytes())),
        )
    }

    /// Whether requests must carry a token.
    pub fn required(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the `Authorization` header value `header` carries it.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(given) = header.and_then(bearer) else {
            return false;
        };
        constant_time_eq(given, expected)
    }
}

/// The credentials of a `Bearer` authorization (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares without an early exit on the first differing byte, so the
/// time taken tells nothing about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The middleware: passes the request on when it carries the token (or
/// none is required, or the path is open), else answers 401.
pub async fn require(State(token): State<Token>, request: Request, next: Next) -> Response {
    if !token.required() || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if token.admits(header) {
        next.run(request).await
    } else {
        let why = if header.is_some() {
            "the bearer token is not the gateway's"
        } else {
            "this gateway needs `Authorization: Bearer <token>`"
        };
        HttpError::Unauthorized(why.to_owned()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::new(Some("s3cret"));
        assert!(token.admits(Some(b"Bearer s3cret")));
        assert!(token.admits(Some(b"bearer  s3cret ")));
        assert!(!token.admits(Some(b"Bearer s3cre")));
        assert!(!token.admits(Some(b"Bearer s3cretx")));
        assert!(!token.admits(Some(b"Basic s3cret")));
        assert!(!token.admits(Some(b"s3cret")));
        assert!(!token.admits(None));
    }

    #[test]
    fn no_token_or_an_empty_one_admits_everyone() {
        assert!(Token::new(None).admits(None));
        assert!(!Token::new(Some("")).required());
        assert_eq!(format!("{:?}", Token::new(Some("x"))), "Token(\"set\")");
    }
}
