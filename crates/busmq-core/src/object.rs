//! Rules for the fields of persistable objects, checked at every entry
//! point that writes them.

use crate::{Error, Limits, ObjectName, Result};

/// Checks the fields of one save of `object`: at least one field, at most
/// `max_batch_len` of them, names of 1..=`max_name_len` bytes, and every
/// value valid JSON text of at most `max_message_bytes`.
pub fn check_fields(
    object: &ObjectName,
    fields: &[(String, String)],
    limits: &Limits,
) -> Result<()> {
    if fields.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "saving object {object:?} needs at least one field"
        )));
    }
    if fields.len() > limits.max_batch_len {
        return Err(Error::BatchTooLarge {
            count: fields.len(),
            limit: limits.max_batch_len,
        });
    }
    for (name, value) in fields {
        if name.is_empty() || name.len() > limits.max_name_len {
            return Err(Error::InvalidArgument(format!(
                "field names of object {object:?} must be 1..={} bytes, got {}",
                limits.max_name_len,
                name.len()
            )));
        }
        if value.len() > limits.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: value.len(),
                limit: limits.max_message_bytes,
            });
        }
        // Only the syntax matters: nothing is kept of the parse.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(value) {
            return Err(Error::NotJson {
                object: object.to_string(),
                field: name.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_values_pass_and_others_are_invalid_arguments() {
        let l = Limits::default();
        let o = ObjectName::parse("obj", &l).unwrap();
        assert!(
            check_fields(
                &o,
                &fields(&[("a", "1"), ("b", r#"{"x":[true,null]}"#), ("c", "\"s\"")]),
                &l
            )
            .is_ok()
        );
        let err = check_fields(&o, &fields(&[("a", "hello")]), &l).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);
        assert!(
            err.to_string().contains("\"a\"") && err.to_string().contains("not JSON"),
            "{err}"
        );
        assert!(
            check_fields(&o, &fields(&[("a", "1 2")]), &l).is_err(),
            "trailing data"
        );
        assert!(
            check_fields(&o, &fields(&[("a", "")]), &l).is_err(),
            "empty text"
        );
        assert!(check_fields(&o, &[], &l).is_err());
        assert!(check_fields(&o, &fields(&[("", "1")]), &l).is_err());
    }
}
