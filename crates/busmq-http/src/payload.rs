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
//!
//! `/v1` also takes a batch (`{"messages": [...]}`, each element one
//! message by the same rule), a `text/plain` body (one message, stored as a
//! JSON string like a form payload) and an `application/octet-stream` body
//! (one message, its bytes as they are).

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde_json::Value;

use crate::error::HttpError;

/// The body encodings the push routes take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// `application/json` or `application/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `text/plain`: the body is one message, a string.
    Text,
    /// `application/octet-stream`: the body is one message, its bytes.
    Octets,
}

/// The encoding the request's `Content-Type` names among `accepted`, or a
/// 415 that says what to send (`expected`).
fn encoding(
    headers: &HeaderMap,
    accepted: &[Encoding],
    expected: &str,
) -> Result<Encoding, HttpError> {
    let unsupported =
        |what: &str| HttpError::UnsupportedMediaType(format!("{what}: send {expected}"));
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
    let encoding = match essence.as_str() {
        "application/json" => Some(Encoding::Json),
        json if json.starts_with("application/") && json.ends_with("+json") => Some(Encoding::Json),
        "application/x-www-form-urlencoded" => Some(Encoding::Form),
        "text/plain" => Some(Encoding::Text),
        "application/octet-stream" => Some(Encoding::Octets),
        _ => None,
    };
    encoding
        .filter(|e| accepted.contains(e))
        .ok_or_else(|| unsupported(&format!("Content-Type {value:?}")))
}

/// The JSON text of `value`, compact: the bytes of its message.
pub fn stored(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// `body` parsed as JSON, or a 400.
pub fn parse_json(body: &[u8]) -> Result<Value, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError::MalformedJson(e.to_string()))
}

/// The `payload` of a form body: a string.
fn form_payload(body: &[u8]) -> Result<Value, HttpError> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| Value::String(value.into_owned()))
        .ok_or_else(|| HttpError::MissingPayload("the form body has no \"payload\" field".into()))
}

/// The `payload` field of a parsed JSON body.
fn json_payload(body: Value) -> Result<Value, HttpError> {
    let Value::Object(mut fields) = body else {
        return Err(HttpError::MissingPayload(
            "the body must be a JSON object with a \"payload\" field".into(),
        ));
    };
    fields
        .remove("payload")
        .ok_or_else(|| HttpError::MissingPayload("the JSON body has no \"payload\" field".into()))
}

/// The message bytes of a `POST /message/new` body, by the rule above.
pub fn from_request(headers: &HeaderMap, body: &[u8]) -> Result<Bytes, HttpError> {
    let expected =
        "application/json ({\"payload\": ...}) or application/x-www-form-urlencoded (payload=...)";
    let value = match encoding(headers, &[Encoding::Json, Encoding::Form], expected)? {
        Encoding::Json => json_payload(parse_json(body)?)?,
        _ => form_payload(body)?,
    };
    Ok(stored(&value))
}

/// The messages of a `/v1` push body, pushed in one SDK call: JSON
/// `{"payload": ...}` (one) or `{"messages": [...]}` (a batch, not empty),
/// a form `payload=...`, `text/plain` or `application/octet-stream` (one
/// each), by the rule above.
pub fn messages_from_request(headers: &HeaderMap, body: Bytes) -> Result<Vec<Bytes>, HttpError> {
    let expected = "application/json ({\"payload\": ...} or {\"messages\": [...]}), \
         application/x-www-form-urlencoded (payload=...), text/plain or application/octet-stream";
    let all = [
        Encoding::Json,
        Encoding::Form,
        Encoding::Text,
        Encoding::Octets,
    ];
    match encoding(headers, &all, expected)? {
        Encoding::Json => messages_from_json(parse_json(&body)?),
        Encoding::Form => Ok(vec![stored(&form_payload(&body)?)]),
        Encoding::Text => {
            let text = std::str::from_utf8(&body).map_err(|e| {
                HttpError::InvalidBody(format!("a text/plain body must be UTF-8: {e}"))
            })?;
            Ok(vec![stored(&Value::String(text.to_owned()))])
        }
        Encoding::Octets => Ok(vec![body]),
    }
}

/// The messages of a parsed JSON push: `{"payload": ...}` or
/// `{"messages": [...]}` (see [`messages_from_request`]).
pub fn messages_from_json(body: Value) -> Result<Vec<Bytes>, HttpError> {
    let Value::Object(mut fields) = body else {
        return Err(HttpError::MissingPayload(
            "the body must be a JSON object with a \"payload\" or a \"messages\" field".into(),
        ));
    };
    match (fields.remove("payload"), fields.remove("messages")) {
        (Some(_), Some(_)) => Err(HttpError::InvalidBody(
            "give either \"payload\" (one message) or \"messages\" (a batch), not both".into(),
        )),
        (Some(payload), None) => Ok(vec![stored(&payload)]),
        (None, Some(Value::Array(messages))) if !messages.is_empty() => {
            Ok(messages.iter().map(stored).collect())
        }
        (None, Some(_)) => Err(HttpError::InvalidBody(
            "\"messages\" must be a non-empty array of payloads".into(),
        )),
        (None, None) => Err(HttpError::MissingPayload(
            "the JSON body has neither a \"payload\" nor a \"messages\" field".into(),
        )),
    }
}

/// The parsed body of a route that takes JSON only (a persistable's
/// fields), or a 415 or 400.
pub fn json_from_request(headers: &HeaderMap, body: &[u8]) -> Result<Value, HttpError> {
    encoding(headers, &[Encoding::Json], "application/json")?;
    parse_json(body)
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
    fn v1_bodies_are_one_message_or_a_batch() {
        let json = typed("application/json");
        let one = messages_from_request(&json, Bytes::from_static(br#"{"payload": {"a": 1}}"#));
        assert_eq!(one.unwrap(), vec![Bytes::from_static(br#"{"a":1}"#)]);
        let batch = messages_from_request(
            &json,
            Bytes::from_static(br#"{"messages": [1, "x", null]}"#),
        );
        let expected: Vec<Bytes> = vec!["1".into(), r#""x""#.into(), "null".into()];
        assert_eq!(batch.unwrap(), expected);
        let text = messages_from_request(&typed("text/plain"), Bytes::from_static(b"hi \"you\""));
        assert_eq!(text.unwrap(), vec![Bytes::from_static(br#""hi \"you\"""#)]);
        let raw = messages_from_request(
            &typed("application/octet-stream"),
            Bytes::from_static(b"\xff\x00"),
        );
        assert_eq!(raw.unwrap(), vec![Bytes::from_static(b"\xff\x00")]);
        for (body, bad) in [
            (&br#"{"messages": []}"#[..], "empty"),
            (br#"{"messages": 1}"#, "not an array"),
            (br#"{"messages": [1], "payload": 1}"#, "both"),
        ] {
            let err = messages_from_request(&json, Bytes::copy_from_slice(body)).unwrap_err();
            assert!(matches!(err, HttpError::InvalidBody(_)), "{bad}");
        }
        let err = messages_from_request(&json, Bytes::from_static(b"{}")).unwrap_err();
        assert!(matches!(err, HttpError::MissingPayload(_)));
        let xml = typed("application/xml");
        let err = messages_from_request(&xml, Bytes::from_static(b"<a/>")).unwrap_err();
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
