//! How an HTTP `payload` becomes the bytes of a message and back.
//!
//! The rule: a message pushed over HTTP holds the JSON text of its
//! payload, compact. `{"payload": "hi"}` and the form field `payload=hi`
//! store `"hi"` (quotes included), `{"payload": {"a": 1}}` stores
//! `{"a":1}`. Reading parses the bytes back, so every JSON value comes out
//! of `GET /message/next` exactly as it went in, strings that look like
//! numbers included. A message pushed by another client (the SDK, the CLI)
//! whose bytes are not JSON text is returned as a JSON string of those
//! bytes (invalid UTF-8 replaced by U+FFFD).

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde_json::Value;

use crate::error::HttpError;

/// The body encodings `POST /message/new` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Form,
}

/// The encoding the request's `Content-Type` names, or a 415.
fn encoding(headers: &HeaderMap) -> Result<Encoding, HttpError> {
    let unsupported = |what: &str| {
        HttpError::UnsupportedMediaType(format!(
            "{what}: send application/json ({{\"payload\": ...}}) or application/x-www-form-urlencoded (payload=...)"
        ))
    };
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(unsupported("no Content-Type"));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("unreadable Content-Type"))?;
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(Encoding::Json)
    } else if essence == "application/x-www-form-urlencoded" {
        Ok(Encoding::Form)
    } else {
        Err(unsupported(&format!("Content-Type {value:?}")))
    }
}

/// The message bytes of a `POST /message/new` body, by the rule above.
pub fn from_request(headers: &HeaderMap, body: &[u8]) -> Result<Bytes, HttpError> {
    let value = match encoding(headers)? {
        Encoding::Json => {
            let parsed: Value = serde_json::from_slice(body)
                .map_err(|e| HttpError::MalformedJson(e.to_string()))?;
            let Value::Object(mut fields) = parsed else {
                return Err(HttpError::MissingPayload(
                    "the body must be a JSON object with a \"payload\" field".into(),
                ));
            };
            fields.remove("payload").ok_or_else(|| {
                HttpError::MissingPayload("the JSON body has no \"payload\" field".into())
            })?
        }
        Encoding::Form => form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| Value::String(value.into_owned()))
            .ok_or_else(|| {
                HttpError::MissingPayload("the form body has no \"payload\" field".into())
            })?,
    };
    Ok(Bytes::from(value.to_string()))
}

/// The JSON value of a message's bytes, by the rule above.
pub fn to_response(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn typed(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    fn round_trip(body: &str) -> Value {
        let stored = from_request(&typed("application/json"), body.as_bytes()).unwrap();
        to_response(&stored)
    }

    #[test]
    fn every_json_value_round_trips() {
        for payload in [
            r#""yada yada yada""#,
            r#""42""#,
            "42",
            "-1.5",
            "true",
            "null",
            r#"{"a":[1,"b",{"c":null}]}"#,
            r#"[1,2,3]"#,
            r#""{\"looks\":\"like json\"}""#,
        ] {
            let expected: Value = serde_json::from_str(payload).unwrap();
            let got = round_trip(&format!(r#"{{"payload": {payload}, "other": 1}}"#));
            assert_eq!(got, expected, "{payload}");
        }
    }

    #[test]
    fn a_form_payload_is_a_string() {
        let stored = from_request(
            &typed("application/x-www-form-urlencoded"),
            b"x=1&payload=hello+world%21&payload=second",
        )
        .unwrap();
        assert_eq!(&stored[..], br#""hello world!""#);
        assert_eq!(to_response(&stored), Value::String("hello world!".into()));
    }

    #[test]
    fn bytes_that_are_not_json_come_back_as_a_string() {
        assert_eq!(
            to_response(b"my name is foo"),
            Value::String("my name is foo".into())
        );
        assert_eq!(to_response(b"\xff"), Value::String("\u{fffd}".into()));
    }

    #[test]
    fn content_types() {
        assert!(
            from_request(
                &typed("application/json; charset=utf-8"),
                br#"{"payload":1}"#
            )
            .is_ok()
        );
        assert!(from_request(&typed("application/vnd.x+json"), br#"{"payload":1}"#).is_ok());
        for bad in [
            "text/plain",
            "application/xml",
            "multipart/form-data; boundary=x",
        ] {
            let err = from_request(&typed(bad), b"payload=1").unwrap_err();
            assert!(matches!(err, HttpError::UnsupportedMediaType(_)), "{bad}");
        }
        let err = from_request(&HeaderMap::new(), b"payload=1").unwrap_err();
        assert!(matches!(err, HttpError::UnsupportedMediaType(_)));
    }

    #[test]
    fn bad_bodies() {
        let json = typed("application/json");
        assert!(matches!(
            from_request(&json, b"{\"payload\":").unwrap_err(),
            HttpError::MalformedJson(_)
        ));
        for missing in [&b"{}"[..], b"[1]", b"\"payload\""] {
            assert!(matches!(
                from_request(&json, missing).unwrap_err(),
                HttpError::MissingPayload(_)
            ));
        }
        let form = typed("application/x-www-form-urlencoded");
        assert!(matches!(
            from_request(&form, b"pay=1").unwrap_err(),
            HttpError::MissingPayload(_)
        ));
    }
}
