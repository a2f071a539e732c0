//! Reading what a request names: path segments, query parameters and the
//! body, each refused with a 400 (or 413) of its own when it is not what
//! the route takes. Shared by the message-queue routes and `/v1`.

use std::str::FromStr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::StatusCode;

use crate::MAX_WAIT;
use crate::error::HttpError;

/// A path segment the router matched but could not decode (not UTF-8).
pub(crate) fn bad_path(rejection: PathRejection) -> HttpError {
    HttpError::BadParameter(format!("bad path: {}", rejection.body_text()))
}

/// The request body, or why it could not be read: over `limit` is 413.
pub(crate) fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, HttpError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::BodyTooLarge { limit }
        } else {
            HttpError::BadBody(rejection.body_text())
        }
    })
}

/// `key`'s value in the query string, if given.
pub(crate) fn query_param(query: &Option<String>, key: &str) -> Option<String> {
    let query = query.as_deref()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `raw` as a positive integer, or a 400 naming `what`.
fn positive<T: FromStr + Default + PartialOrd>(raw: &str, what: &str) -> Result<T, HttpError> {
    raw.parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| {
            HttpError::BadParameter(format!("{what} is a positive integer, not {raw:?}"))
        })
}

/// `?key=N`, a positive integer, when given.
pub(crate) fn positive_param<T: FromStr + Default + PartialOrd>(
    query: &Option<String>,
    key: &str,
) -> Result<Option<T>, HttpError> {
    query_param(query, key)
        .map(|raw| positive(&raw, key))
        .transpose()
}

/// `?key=N`, a non-negative integer, when given.
pub(crate) fn index_param(query: &Option<String>, key: &str) -> Result<Option<u64>, HttpError> {
    query_param(query, key)
        .map(|raw| {
            raw.parse::<u64>().map_err(|_| {
                HttpError::BadParameter(format!("{key} is an integer from 0, not {raw:?}"))
            })
        })
        .transpose()
}

/// `?key=SECONDS`, a finite number of seconds from 0 (above 0 when
/// `positive`), when given.
pub(crate) fn seconds_param(
    query: &Option<String>,
    key: &str,
    positive: bool,
) -> Result<Option<f64>, HttpError> {
    let Some(raw) = query_param(query, key) else {
        return Ok(None);
    };
    let least = if positive { "above 0" } else { "from 0" };
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (*s > 0.0 || (!positive && *s == 0.0)))
        .map(Some)
        .ok_or_else(|| {
            HttpError::BadParameter(format!(
                "{key} must be a number of seconds {least}, not {raw:?}"
            ))
        })
}

/// `?wait=SECONDS`: a non-negative number, capped at [`MAX_WAIT`].
pub(crate) fn wait_param(query: &Option<String>) -> Result<Duration, HttpError> {
    let seconds = seconds_param(query, "wait", false).map_err(|_| {
        HttpError::BadParameter(format!(
            "wait must be a number of seconds from 0 (at most {} is used), not {:?}",
            MAX_WAIT.as_secs(),
            query_param(query, "wait").unwrap_or_default()
        ))
    })?;
    Ok(Duration::from_secs_f64(
        seconds.unwrap_or(0.0).min(MAX_WAIT.as_secs_f64()),
    ))
}

/// The longest lease `?visibility=SECONDS` asks for: the broker's ceiling.
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// A lease of `seconds`: above 0 and at most [`MAX_VISIBILITY`], in whole
/// milliseconds as the broker counts them (never zero).
pub(crate) fn visibility(seconds: f64) -> Result<Duration, HttpError> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_VISIBILITY.as_secs_f64()) {
        return Err(HttpError::BadParameter(format!(
            "visibility is a number of seconds above 0 and at most {}, not {seconds}",
            MAX_VISIBILITY.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(seconds).max(Duration::from_millis(1)))
}

/// `?visibility=SECONDS` (see [`visibility`]), when given.
pub(crate) fn visibility_param(query: &Option<String>) -> Result<Option<Duration>, HttpError> {
    seconds_param(query, "visibility", true)?
        .map(visibility)
        .transpose()
}

/// A message id: a positive integer.
pub(crate) fn id_param(raw: &str) -> Result<u64, HttpError> {
    positive(raw, "a message id")
}

/// `?attempt=N`: the delivery a done names, when the client kept it.
pub(crate) fn attempt_param(query: &Option<String>) -> Result<Option<u32>, HttpError> {
    positive_param(query, "attempt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn wait_is_seconds_capped_at_the_maximum() {
        assert_eq!(wait_param(&None).unwrap(), Duration::ZERO);
        assert_eq!(wait_param(&q("x=1")).unwrap(), Duration::ZERO);
        assert_eq!(wait_param(&q("wait=2")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            wait_param(&q("wait=0.5")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(wait_param(&q("wait=3600")).unwrap(), MAX_WAIT);
        for bad in ["wait=", "wait=abc", "wait=-1", "wait=NaN", "wait=inf"] {
            assert!(wait_param(&q(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_attempts_are_positive_integers() {
        assert_eq!(id_param("7").unwrap(), 7);
        for bad in ["0", "-1", "abc", "1.5", "", "99999999999999999999999"] {
            assert!(id_param(bad).is_err(), "{bad}");
        }
        assert_eq!(attempt_param(&q("attempt=2")).unwrap(), Some(2));
        assert_eq!(attempt_param(&None).unwrap(), None);
        assert!(attempt_param(&q("attempt=0")).is_err());
        assert!(attempt_param(&q("attempt=x")).is_err());
    }

    #[test]
    fn visibility_is_positive_seconds_up_to_the_ceiling() {
        assert_eq!(visibility_param(&None).unwrap(), None);
        assert_eq!(
            visibility_param(&q("visibility=1.5")).unwrap(),
            Some(Duration::from_millis(1500))
        );
        for bad in [
            "visibility=0",
            "visibility=-1",
            "visibility=x",
            "visibility=43201",
        ] {
            assert!(visibility_param(&q(bad)).is_err(), "{bad}");
        }
        assert_eq!(index_param(&q("from=0"), "from").unwrap(), Some(0));
        assert!(index_param(&q("from=-1"), "from").is_err());
    }
}
